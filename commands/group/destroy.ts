import {Args, Flags} from '@oclif/core'
import {destroyGroup} from '../../src/group/GroupAdmin.js'
import {withGroup} from '../../src/group/GroupSession.js'
import {BaseCommand, waitFlag, waitSeconds} from '../../src/ui/BaseCommand.js'
import {confirm} from '../../src/ui/confirm.js'

export default class GroupDestroy extends BaseCommand {
  static summary = "Destroy a clone group's state (never any volume data)."
  static description = 'Removes group.json and the maps. Refuses while the group has clones unless --force. Source and clone volumes are left exactly as they are.'
  static examples = ['<%= config.bin %> group destroy db1', '<%= config.bin %> group destroy db1 --force --yes']
  static flags = {
    force: Flags.boolean({summary: 'Destroy even though clones exist (their volumes are kept).'}),
    yes: Flags.boolean({char: 'y', summary: 'Do not ask for confirmation.'}),
    wait: waitFlag,
  }
  static args = {group: Args.string({description: 'The group.', required: true})}

  async run(): Promise<{group: string; clones: number}> {
    const {args, flags} = await this.parse(GroupDestroy)
    const ctx = await this.context(flags['state-dir'])
    await ctx.store.load(args.group)
    await confirm(`Destroy the state of group ${args.group}?`, flags.yes || this.jsonEnabled())
    // Under the lock, so a running operation is never pulled out from under it.
    const out = await withGroup(ctx, args.group, {command: this.commandLine(), waitSeconds: waitSeconds(flags.wait), open: {writable: false, volumes: false}}, async () =>
      destroyGroup(ctx, args.group, flags.force),
    )
    if (!this.jsonEnabled()) this.log(`Destroyed group ${args.group}${out.clones ? ` (${out.clones} clone volume(s) left untouched)` : ''}`)
    return out
  }
}
