import {type JobInfo, jobRequest} from '../../src/group/JobControl.js'
import {BaseCommand} from '../../src/ui/BaseCommand.js'
import {type JobResult, toJobResult} from '../../src/ui/results/results.js'
import {describeJob} from '../../src/ui/tables.js'
import {requiredOperand} from '../../src/ui/args.js'

export default class JobResume extends BaseCommand {
  static summary = "Resume a group's paused sync or restore."
  static description = 'Resuming a job that is not paused succeeds and changes nothing. (An interrupted restore, with no process running it, resumes with `clonectl restore GROUP`.)'
  static examples = ['<%= config.bin %> job resume db1']
  static args = {group: requiredOperand('The group.')}

  async run(): Promise<JobResult> {
    const {args, flags} = await this.parse(JobResume)
    const ctx = await this.context(flags['state-dir'])
    const j = (await jobRequest(ctx, args.group, {op: 'resume'})) as JobInfo
    if (!this.jsonEnabled()) this.log(`Resumed the ${describeJob(j)}.`)
    return toJobResult(j)
  }
}
