import {fracture} from '../../src/group/GroupOperations.js'
import {BaseCommand, waitFlag, waitSeconds} from '../../src/ui/BaseCommand.js'
import {type CloneFractureResult, toFractureResult} from '../../src/ui/results/results.js'
import {requiredOperand} from '../../src/ui/args.js'

export default class CloneFracture extends BaseCommand {
  static summary = 'Fracture clones: freeze each as a point-in-time copy; from now on its delta map records host writes.'
  static examples = ['<%= config.bin %> clone fracture db1 nightly', '<%= config.bin %> clone fracture db1 c1 c2 --json']
  static strict = false
  static flags = {wait: waitFlag}
  static args = {
    group: requiredOperand('The group.'),
    clone: requiredOperand('One or more clones.'),
  }

  async run(): Promise<CloneFractureResult> {
    const {args, argv, flags} = await this.parse(CloneFracture)
    const names = (argv as string[]).slice(1)
    const ctx = await this.context(flags['state-dir'])
    const out = await fracture(ctx, args.group, names, {command: this.commandLine(), waitSeconds: waitSeconds(flags.wait)})
    if (!this.jsonEnabled()) for (const r of out) this.log(r.alreadyFractured ? `Clone ${r.clone} was already fractured (at ${r.fracturedAt ?? '?'}).` : `Fractured clone ${r.clone} at ${r.fracturedAt}.`)
    return toFractureResult(out)
  }
}
