import {Flags} from '@oclif/core'
import {VerifyMismatchError} from '../src/errors/errors.js'
import {verify} from '../src/group/GroupOperations.js'
import {BaseCommand, waitFlag, waitSeconds} from '../src/ui/BaseCommand.js'
import {ProgressRenderer} from '../src/ui/ProgressRenderer.js'
import {toVerifyResult, type VerifyResult} from '../src/ui/results/results.js'
import {signalController} from '../src/ui/signals.js'
import {requiredOperand} from '../src/ui/args.js'

export default class Verify extends BaseCommand {
  static summary = "Compare source and clone extent by extent against the clone's delta map."
  static description = `An extent that differs while its delta bit is clear is an invariant violation: it is listed and the exit status is 9 (under --json the error object then carries the comparison as \`result\`). Extents marked but equal are harmless (they cost a copy). With --repair the map is rebuilt exactly; a following \`clone sync\` then makes the clone equal.`
  static examples = ['<%= config.bin %> verify db1 nightly', '<%= config.bin %> verify db1 nightly --repair --json']
  static flags = {
    repair: Flags.boolean({summary: 'Rebuild the delta map exactly from the comparison.'}),
    wait: waitFlag,
  }
  static args = {
    group: requiredOperand('The group.'),
    clone: requiredOperand('The clone.'),
  }

  async run(): Promise<VerifyResult> {
    const {args, flags} = await this.parse(Verify)
    const ctx = await this.context(flags['state-dir'])
    const progress = new ProgressRenderer()
    const {controller, dispose} = signalController()
    try {
      const r = await verify(ctx, args.group, args.clone, {command: this.commandLine(), waitSeconds: waitSeconds(flags.wait), repair: flags.repair, signal: controller.signal, onProgress: (p) => progress.update(p)})
      progress.done()
      if (!this.jsonEnabled()) {
        if (r.violations.length > 0) this.log(`Clone ${r.clone}: ${r.violations.length} extent(s) differed while unmarked; map repaired.`)
        else this.log(`Clone ${r.clone}: the delta map covers every difference (${r.markedDifferent} marked and different, ${r.markedEqual} marked but equal)${r.repaired ? '; map rebuilt exactly' : ''}.`)
      }
      return toVerifyResult(r)
    } catch (error) {
      // Under --json the comparison goes out with the error, as a passing verify prints it.
      if (error instanceof VerifyMismatchError && error.report) this.failedResult = toVerifyResult(error.report)
      throw error
    } finally {
      progress.done()
      dispose()
    }
  }
}
