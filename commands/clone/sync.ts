import {Flags} from '@oclif/core'
import {parseSize} from '../../src/group/GroupAdmin.js'
import {syncClone} from '../../src/group/GroupOperations.js'
import {BaseCommand, rateFlag, waitFlag, waitSeconds} from '../../src/ui/BaseCommand.js'
import {ProgressRenderer} from '../../src/ui/ProgressRenderer.js'
import {humanBytes, humanDuration} from '../../src/ui/format.js'
import {type SyncResult, toSyncResult} from '../../src/ui/results/results.js'
import {signalController} from '../../src/ui/signals.js'
import {requiredOperand} from '../../src/ui/args.js'

export default class CloneSync extends BaseCommand {
  static summary = 'Synchronize a clone with the source, copying only the extents in its delta map.'
  static description = 'Copies source → clone in ascending order. Interrupted (SIGINT, SIGTERM, SIGKILL) the clone is out-of-sync with its map intact, and the next sync copies only what is left. A source or clone changed outside clonectl makes the sync compare and copy every extent.'
  static examples = ['<%= config.bin %> clone sync db1 nightly', '<%= config.bin %> clone sync db1 nightly --rate 100M --wait=600 --json']
  static flags = {
    full: Flags.boolean({summary: 'Compare and copy every extent, ignoring the delta map.'}),
    rate: rateFlag,
    wait: waitFlag,
  }
  static args = {
    group: requiredOperand('The group.'),
    clone: requiredOperand('The clone.'),
  }

  async run(): Promise<SyncResult> {
    const {args, flags} = await this.parse(CloneSync)
    const ctx = await this.context(flags['state-dir'])
    const progress = new ProgressRenderer()
    const {controller, dispose} = signalController()
    try {
      const out = await syncClone(ctx, args.group, {
        clone: args.clone,
        full: flags.full,
        rate: flags.rate ? parseSize(flags.rate, '--rate') : undefined,
        command: this.commandLine(),
        waitSeconds: waitSeconds(flags.wait),
        signal: controller.signal,
        onProgress: (p) => progress.update(p),
      })
      progress.done()
      if (!this.jsonEnabled())
        this.log(out.alreadySynchronized ? `Clone ${args.clone} is already synchronized; nothing to copy.` : `Synchronized clone ${args.clone}: copied ${humanBytes(out.copiedBytes)} in ${humanDuration(out.elapsedMs)}${out.skippedBytes ? `, skipped ${humanBytes(out.skippedBytes)} (zeros or equal)` : ''}${out.compared ? ' (compare-and-copy)' : ''}`)
      return toSyncResult(out)
    } finally {
      progress.done()
      dispose()
    }
  }
}
