import {listJobs} from '../../src/group/JobControl.js'
import {BaseCommand} from '../../src/ui/BaseCommand.js'
import {type JobResult, toJobResult} from '../../src/ui/results/results.js'
import {renderJobs} from '../../src/ui/tables.js'
import {operand} from '../../src/ui/args.js'

export default class JobList extends BaseCommand {
  static summary = 'List running syncs and restores: state (running, paused, cancelled), progress, rate, and who runs them.'
  static description = 'A job runs either under `clonectl serve` or as a foreground `clone sync` / `restore` in another shell; both are listed and controlled alike.'
  static examples = ['<%= config.bin %> job list', '<%= config.bin %> job list db1 --json']
  static args = {group: operand('One group (default: all).')}

  async run(): Promise<JobResult[]> {
    const {args, flags} = await this.parse(JobList)
    const ctx = await this.context(flags['state-dir'])
    const jobs = await listJobs(ctx, args.group)
    if (!this.jsonEnabled()) this.log(jobs.length === 0 ? `No sync or restore running${args.group ? ` in group ${args.group}` : ''}.` : renderJobs(jobs))
    return jobs.map(toJobResult)
  }
}
