import {Flags} from '@oclif/core'
import {parseSize} from '../../src/group/GroupAdmin.js'
import {add, addAndSync} from '../../src/group/GroupOperations.js'
import {BaseCommand, rateFlag, waitFlag, waitSeconds} from '../../src/ui/BaseCommand.js'
import {ProgressRenderer} from '../../src/ui/ProgressRenderer.js'
import {humanBytes, humanDuration} from '../../src/ui/format.js'
import {type CloneAddResult, toCloneAddResult} from '../../src/ui/results/results.js'
import {signalController} from '../../src/ui/signals.js'
import {requiredOperand} from '../../src/ui/args.js'

export default class CloneAdd extends BaseCommand {
  static summary = 'Add a clone to a group and (unless --no-sync) copy the source to it.'
  static description = 'The clone must be at least as large as the source and must not be the source under another name or a volume used by any group. The first sync is a full copy; zero extents are not written to a sparse image.'
  static examples = ['<%= config.bin %> clone add db1 nightly --path /backup/db1-nightly.img --create', '<%= config.bin %> clone add db1 c2 --path /dev/sdc --no-sync']
  static flags = {
    path: Flags.string({summary: 'The clone volume: an image file or a block device.', required: true, helpValue: 'PATH'}),
    create: Flags.boolean({summary: "Create PATH as a sparse image of the source's size (it must not exist)."}),
    sync: Flags.boolean({summary: 'Copy the source to the clone now.', default: true, allowNo: true}),
    rate: rateFlag,
    wait: waitFlag,
  }
  static args = {
    group: requiredOperand('The group.'),
    clone: requiredOperand('Name of the new clone.'),
  }

  async run(): Promise<CloneAddResult> {
    const {args, flags} = await this.parse(CloneAdd)
    const ctx = await this.context(flags['state-dir'])
    const wait = waitSeconds(flags.wait)
    const opts = {command: this.commandLine(), waitSeconds: wait}
    const spec = {clone: args.clone, path: flags.path, create: flags.create}
    if (!flags.sync) {
      const clone = await add(ctx, args.group, spec, opts)
      this.info(`Added clone ${args.clone} (${clone.volume.path}) to group ${args.group}; not synchronized (--no-sync)`)
      return toCloneAddResult({clone})
    }
    const progress = new ProgressRenderer()
    const {controller, dispose} = signalController()
    try {
      const out = await addAndSync(ctx, args.group, spec, {
        ...opts,
        rate: flags.rate ? parseSize(flags.rate, '--rate') : undefined,
        signal: controller.signal,
        onProgress: (p) => progress.update(p),
      })
      progress.done()
      if (!this.jsonEnabled()) this.log(`Added clone ${args.clone} (${out.clone.volume.path}) and synchronized it: copied ${humanBytes(out.sync.copiedBytes)} in ${humanDuration(out.sync.elapsedMs)}, skipped ${humanBytes(out.sync.skippedBytes)} of zeros`)
      return toCloneAddResult(out)
    } finally {
      progress.done()
      dispose()
    }
  }
}
