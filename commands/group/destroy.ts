import {Flags} from '@oclif/core'
import {CorruptStateError} from '../../src/errors/errors.js'
import {destroyDamagedGroup, destroyGroup} from '../../src/group/GroupAdmin.js'
import {withGroup} from '../../src/group/GroupSession.js'
import {BaseCommand, waitFlag, waitSeconds} from '../../src/ui/BaseCommand.js'
import {type GroupDestroyResult, toGroupDestroyResult} from '../../src/ui/results/results.js'
import {requiredOperand} from '../../src/ui/args.js'

export default class GroupDestroy extends BaseCommand {
  static summary = "Destroy a clone group's state (never any volume data)."
  static description =
    'Removes group.json and the maps. Refuses while the group has clones unless --force, and while a restore is recorded unless --discard-restore. A group whose group.json is damaged is destroyed with --force. Source and clone volumes are left exactly as they are.'
  static examples = ['<%= config.bin %> group destroy db1', '<%= config.bin %> group destroy db1 --force --yes']
  static flags = {
    force: Flags.boolean({summary: 'Destroy even though clones exist (their volumes are kept), or its group.json is damaged.'}),
    'discard-restore': Flags.boolean({summary: 'Destroy even though a restore is unfinished: the source stays partly restored, and nothing can resume it.'}),
    yes: Flags.boolean({char: 'y', summary: 'Do not ask for confirmation.'}),
    wait: waitFlag,
  }
  static args = {group: requiredOperand('The group.')}

  async run(): Promise<GroupDestroyResult> {
    const {args, flags} = await this.parse(GroupDestroy)
    const ctx = await this.context(flags['state-dir'])
    const damaged = await ctx.store.load(args.group).then(
      () => undefined,
      (error: unknown) => {
        const d = ctx.store.damage(args.group, error)
        // Only a record that cannot be read: an untrusted one (a symlink, another owner) is fixed first.
        if (!d || !flags.force || !(d.error instanceof CorruptStateError)) throw error
        return d
      },
    )
    await this.confirm(`Destroy the state of group ${args.group}${damaged ? ' (its group.json is damaged)' : ''}?`, flags.yes)
    const o = {force: flags.force, discardRestore: flags['discard-restore']}
    const session = {command: this.commandLine(), waitSeconds: waitSeconds(flags.wait)}
    // Under the lock, so a running operation is never pulled out from under it.
    const out = damaged
      ? await destroyDamagedGroup(ctx, args.group, {...o, ...session})
      : await withGroup(ctx, args.group, {...session, open: {writable: false, volumes: false}}, async () => destroyGroup(ctx, args.group, o))
    if (!this.jsonEnabled()) this.log(`Destroyed group ${args.group}${out.clones ? ` (${out.clones} clone volume(s) left untouched)` : ''}`)
    return toGroupDestroyResult(args.group, out)
  }
}
