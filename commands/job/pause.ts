import {type JobInfo, jobRequest} from '../../src/group/JobControl.js'
import {BaseCommand} from '../../src/ui/BaseCommand.js'
import {type JobResult, toJobResult} from '../../src/ui/results/results.js'
import {describeJob} from '../../src/ui/tables.js'
import {requiredOperand} from '../../src/ui/args.js'

export default class JobPause extends BaseCommand {
  static summary = "Pause a group's running sync or restore; it keeps its lock and progress, and copies nothing until resumed."
  static description = 'Returns once the job copies nothing (the chunks already issued are written). Under serve, hosts keep reading and writing during a paused restore: what they need is still copied on demand. A foreground job stays paused in its own shell; `clonectl job resume` (or `job cancel`) goes on.'
  static examples = ['<%= config.bin %> job pause db1', '<%= config.bin %> job pause db1 --json']
  static args = {group: requiredOperand('The group.')}

  async run(): Promise<JobResult> {
    const {args, flags} = await this.parse(JobPause)
    const ctx = await this.context(flags['state-dir'])
    const j = (await jobRequest(ctx, args.group, {op: 'pause'})) as JobInfo
    if (!this.jsonEnabled()) this.log(`Paused the ${describeJob(j)}.`)
    return toJobResult(j)
  }
}
