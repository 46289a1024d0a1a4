import {Flags} from '@oclif/core'
import {parseSize} from '../src/group/GroupAdmin.js'
import {restoreSource} from '../src/group/GroupOperations.js'
import {BaseCommand, rateFlag, waitFlag, waitSeconds} from '../src/ui/BaseCommand.js'
import {ProgressRenderer} from '../src/ui/ProgressRenderer.js'
import {humanBytes, humanDuration} from '../src/ui/format.js'
import {type RestoreResult, toRestoreResult} from '../src/ui/results/results.js'
import {signalController} from '../src/ui/signals.js'
import {operand, requiredOperand} from '../src/ui/args.js'

export default class Restore extends BaseCommand {
  static summary = 'Restore the source from a clone (protected: the clone is never modified), or resume an interrupted restore.'
  static description = `Protected by default: the source is usable at once (through \`clonectl serve\`), host writes made during the restore are kept and recorded, and the clone stays bit-identical. The other clones are fractured first. Interrupted by a signal, kill -9 or power loss, \`clonectl restore GROUP\` resumes it and copies only what is left.

--unprotected is a regular reverse sync: host writes are mirrored to the clone as well.

Under \`clonectl serve\`, a restore refuses to start (exit 5) while NBD clients are connected, naming them: a host that caches the source (a mounted file system) would keep its view of the old data. Unmount and detach, start the restore, reattach; or pass --disconnect-clients to close their connections first.`
  static examples = ['<%= config.bin %> restore db1 nightly', '<%= config.bin %> restore db1 nightly --disconnect-clients --yes', '<%= config.bin %> restore db1 --yes   # resume', '<%= config.bin %> restore db1 nightly --rate 200M --yes --json']
  static flags = {
    unprotected: Flags.boolean({summary: 'Reverse sync that mirrors host writes to the clone (the clone is modified).'}),
    force: Flags.boolean({summary: 'Restore from an out-of-sync or untrusted clone (compare and copy every extent), or resume past a lost or damaged protected restore map (the extents it no longer covers are copied from the clone again).'}),
    yes: Flags.boolean({char: 'y', summary: 'Do not ask for confirmation (the source is overwritten).'}),
    rate: rateFlag,
    wait: waitFlag,
    'disconnect-clients': Flags.boolean({summary: 'Under serve: close the connections of attached NBD clients before the switch, instead of refusing while any is attached.'}),
    'remote-wait': Flags.integer({summary: 'Seconds to wait for a remote (NBD) clone that stopped answering before giving up; the restore stays recorded (default 60).', min: 0, helpValue: 'SECONDS'}),
  }
  static args = {
    group: requiredOperand('The group.'),
    clone: operand('The clone to restore from (optional when resuming).'),
  }

  async run(): Promise<RestoreResult> {
    const {args, flags} = await this.parse(Restore)
    const ctx = await this.context(flags['state-dir'])
    const record = await ctx.store.load(args.group)
    const resuming = record.operation?.kind === 'restore'
    // Without a clone and nothing to resume there is nothing to confirm: restoreSource refuses, naming the clones.
    if (!resuming && args.clone) await this.confirm(`Overwrite the source ${record.source.path} of group ${args.group} with clone ${args.clone}?`, flags.yes)
    const progress = new ProgressRenderer()
    const {controller, dispose} = signalController()
    const t0 = Date.now()
    try {
      const out = await restoreSource(ctx, args.group, {
        clone: args.clone,
        unprotected: flags.unprotected,
        force: flags.force,
        rate: flags.rate ? parseSize(flags.rate, '--rate') : undefined,
        command: this.commandLine(),
        waitSeconds: waitSeconds(flags.wait),
        remoteWaitSeconds: flags['remote-wait'],
        disconnectClients: flags['disconnect-clients'],
        signal: controller.signal,
        onProgress: (p) => progress.update(p),
      })
      progress.done()
      if (!this.jsonEnabled())
        this.log(`${out.resumed ? 'Resumed and completed' : 'Completed'} ${out.protected ? 'protected ' : ''}restore of group ${args.group} from clone ${out.clone}: copied ${humanBytes(out.copiedBytes)} in ${humanDuration(Date.now() - t0)}${out.codCopies ? `, ${out.codCopies} on demand` : ''}; clone ${out.clone} ${out.protected ? 'unchanged' : 'synchronized'}.`)
      return toRestoreResult(out)
    } finally {
      progress.done()
      dispose()
    }
  }
}
