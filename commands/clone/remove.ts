import {Flags} from '@oclif/core'
import {remove} from '../../src/group/GroupOperations.js'
import {BaseCommand, waitFlag, waitSeconds} from '../../src/ui/BaseCommand.js'
import {type CloneRemoveResult, toCloneRemoveResult} from '../../src/ui/results/results.js'
import {requiredOperand} from '../../src/ui/args.js'

export default class CloneRemove extends BaseCommand {
  static summary = 'Remove a clone from its group (its volume and data are left untouched).'
  static examples = ['<%= config.bin %> clone remove db1 nightly --yes']
  static flags = {
    yes: Flags.boolean({char: 'y', summary: 'Do not ask for confirmation.'}),
    wait: waitFlag,
  }
  static args = {
    group: requiredOperand('The group.'),
    clone: requiredOperand('The clone.'),
  }

  async run(): Promise<CloneRemoveResult> {
    const {args, flags} = await this.parse(CloneRemove)
    const ctx = await this.context(flags['state-dir'])
    await this.confirm(`Remove clone ${args.clone} from group ${args.group}? (its volume is kept)`, flags.yes)
    const out = await remove(ctx, args.group, args.clone, {command: this.commandLine(), waitSeconds: waitSeconds(flags.wait)})
    if (!this.jsonEnabled()) this.log(`Removed clone ${out.clone}; ${out.path} was not touched.`)
    return toCloneRemoveResult(out)
  }
}
