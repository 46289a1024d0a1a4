import {parseSize} from '../../src/group/GroupAdmin.js'
import {type JobInfo, jobRequest} from '../../src/group/JobControl.js'
import {BaseCommand} from '../../src/ui/BaseCommand.js'
import {type JobResult, toJobResult} from '../../src/ui/results/results.js'
import {describeJob} from '../../src/ui/tables.js'
import {requiredOperand} from '../../src/ui/args.js'

export default class JobRate extends BaseCommand {
  static summary = "Change the copy rate of a group's running sync or restore (as --rate: bytes per second; 0 or unlimited: no limit)."
  static examples = ['<%= config.bin %> job rate db1 100M', '<%= config.bin %> job rate db1 unlimited --json']
  static args = {
    group: requiredOperand('The group.'),
    rate: requiredOperand('Bytes per second (e.g. 50M), or 0 / unlimited.'),
  }

  async run(): Promise<JobResult> {
    const {args, flags} = await this.parse(JobRate)
    const ctx = await this.context(flags['state-dir'])
    const rate = args.rate === 'unlimited' ? 0 : parseSize(args.rate, 'RATE')
    const j = (await jobRequest(ctx, args.group, {op: 'rate', rate})) as JobInfo
    if (!this.jsonEnabled()) this.log(`Re-rated the ${describeJob(j)}.`)
    return toJobResult(j)
  }
}
