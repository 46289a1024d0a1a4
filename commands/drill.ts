import {Flags} from '@oclif/core'
import {UsageError} from '../src/errors/errors.js'
import {assertDrill, type DrillReport, groupDrill, scratchDrill} from '../src/group/Drill.js'
import {BaseCommand, waitFlag, waitSeconds} from '../src/ui/BaseCommand.js'
import {humanBytes, humanDuration} from '../src/ui/format.js'
import {type DrillResult, toDrillResult} from '../src/ui/results/results.js'
import {renderTable} from '../src/ui/tables.js'
import {operand} from '../src/ui/args.js'

export default class Drill extends BaseCommand {
  static summary = 'Run a recovery drill: a self-contained one on scratch images, or a rehearsal of restoring a real clone into a scratch target.'
  static description = `With no arguments: scratch images in a temporary directory (removed unless --keep), a source with real content (ext4 made with mke2fs -d where e2fsprogs exists), a clone synced and fractured, the source damaged, a protected restore while an in-process host workload reads and writes, then verification. Exit status 10 when any check fails (under --json the error object then carries the drill's report as \`result\`).

With GROUP CLONE --target PATH: restores the clone into PATH (never the group's source), checks PATH against the clone, and runs --exec with {} replaced by PATH (e.g. 'e2fsck -fn {}'). This is what a nightly CI drill calls. While \`clonectl serve\` owns the group, serve does the copy and the check between host requests (the clone must then be fractured: exit 6 for one serve mirrors writes to), and --exec runs here; the report is the same.`
  static examples = ['<%= config.bin %> drill', '<%= config.bin %> drill --json', "<%= config.bin %> drill db1 nightly --target /scratch/db1-drill.img --exec 'e2fsck -fn {}' --yes"]
  static flags = {
    target: Flags.string({summary: 'Scratch volume to restore a real clone into (created sparse if missing; never a volume of any group).', helpValue: 'PATH'}),
    exec: Flags.string({summary: 'Command to check the restored target; {} is replaced by its path.', helpValue: 'CMD'}),
    keep: Flags.boolean({summary: 'Keep the scratch directory of a self-contained drill.'}),
    yes: Flags.boolean({char: 'y', summary: 'Overwrite an existing --target without asking (a nightly drill reusing its target).'}),
    size: Flags.string({summary: 'Size of the scratch source (self-contained drill): at least 16M, in whole MiB.', default: '64M', helpValue: 'SIZE'}),
    force: Flags.boolean({summary: 'Drill a clone that is not a point-in-time copy (out-of-sync).'}),
    wait: waitFlag,
  }
  static args = {
    group: operand('A real group to drill (with CLONE and --target).'),
    clone: operand('The clone to restore from.'),
  }

  async run(): Promise<DrillResult> {
    const {args, flags} = await this.parse(Drill)
    const log = (m: string): void => this.info(m)
    let report: DrillReport
    if (args.group) {
      if (!args.clone || !flags.target) throw new UsageError('a drill of a real group needs GROUP CLONE --target PATH', "e.g. clonectl drill db1 nightly --target /scratch/db1.img --exec 'e2fsck -fn {}'")
      const ctx = await this.context(flags['state-dir'])
      report = await groupDrill(ctx, {group: args.group, clone: args.clone, target: flags.target, exec: flags.exec, command: this.commandLine(), waitSeconds: waitSeconds(flags.wait), force: flags.force, log, confirmOverwrite: (t) => this.confirm(`Overwrite the existing drill target ${t}?`, flags.yes)})
    } else {
      const {parseSize} = await import('../src/group/GroupAdmin.js')
      report = await scratchDrill({keep: flags.keep, sizeBytes: parseSize(flags.size, '--size'), log})
    }
    if (!this.jsonEnabled()) {
      const rows = [
        ['content', `${report.content}, ${humanBytes(report.sizeBytes)}`],
        ...(report.timeToFirstHostIoMs === undefined ? [] : [['time to first host I/O', humanDuration(report.timeToFirstHostIoMs)]]),
        ['restore time', humanDuration(report.restoreMs)],
        ['throughput', `${report.throughputMBps.toFixed(1)} MB/s`],
        ['bytes copied', humanBytes(report.bytesCopied)],
        ['COD copies', String(report.codCopies)],
        ['host reads / writes', `${report.hostReads} / ${report.hostWrites}`],
        ...report.checks.map((c) => [`${c.ok ? 'PASS' : 'FAIL'} ${c.name}`, c.detail]),
      ]
      this.log(renderTable(['drill', report.ok ? 'PASSED' : 'FAILED'], rows))
      if (report.kept && report.dir) this.log(`scratch files kept in ${report.dir}`)
    }
    const result = toDrillResult(report)
    if (!report.ok) this.failedResult = result
    assertDrill(report)
    return result
  }
}
