import {type JobInfo, jobRequest} from '../../src/group/JobControl.js'
import {BaseCommand} from '../../src/ui/BaseCommand.js'
import {type JobResult, toJobResult} from '../../src/ui/results/results.js'
import {describeJob} from '../../src/ui/tables.js'
import {requiredOperand} from '../../src/ui/args.js'

export default class JobCancel extends BaseCommand {
  static summary = "Stop a group's running sync or restore at a safe point; nothing copied is undone."
  static description = `A cancelled sync leaves the clone out-of-sync with its map intact; \`clonectl clone sync\` later copies only what is left.

A protected restore cannot be abandoned half-way (the source is part restored), so cancel stops its copying and leaves it recorded, exactly like an interrupted restore: under serve, hosts go on reading and writing the source (what they need is copied on demand) and the clone is untouched; \`clonectl restore GROUP\` resumes it. The command that waited on the job exits 130 and says it was cancelled.`
  static examples = ['<%= config.bin %> job cancel db1']
  static args = {group: requiredOperand('The group.')}

  async run(): Promise<JobResult> {
    const {args, flags} = await this.parse(JobCancel)
    const ctx = await this.context(flags['state-dir'])
    const j = (await jobRequest(ctx, args.group, {op: 'cancel'})) as JobInfo
    if (!this.jsonEnabled())
      this.log(`Cancelled the ${describeJob(j)}; it stops at a safe point. ${j.kind === 'restore' ? `The restore stays recorded: resume it with \`clonectl restore ${j.group}\`.` : `Clone ${j.clone} is out-of-sync: \`clonectl clone sync ${j.group} ${j.clone}\` copies what is left.`}`)
    return toJobResult(j)
  }
}
