import {status, statusAll} from '../src/group/GroupStatus.js'
import {BaseCommand} from '../src/ui/BaseCommand.js'
import {type StatusResult, toStatusResult} from '../src/ui/results/results.js'
import {renderDamagedGroup, renderGroupStatus} from '../src/ui/tables.js'
import {operand} from '../src/ui/args.js'

export default class Status extends BaseCommand {
  static summary = 'Show each clone: state, dirty extents and bytes, % in sync, last sync and fracture; and any operation in progress or interrupted.'
  static description = 'A sync or restore paused with `clonectl job pause` shows as PAUSED with its rate (--json: operation.paused, operation.rate in bytes/s, absent when unlimited). Without GROUP, a group whose group.json cannot be read or trusted is listed as damaged (its file and the reason; in --json as {name, damaged: {file, reason, code, fix}}), and the other groups are shown as usual.'
  static examples = ['<%= config.bin %> status', '<%= config.bin %> status db1 --json']
  static args = {group: operand('One group (default: all).')}

  async run(): Promise<StatusResult> {
    const {args, flags} = await this.parse(Status)
    const ctx = await this.context(flags['state-dir'])
    const out = args.group ? [await status(ctx, args.group)] : await statusAll(ctx)
    if (!this.jsonEnabled()) {
      if (out.length === 0) this.log(`No clone groups in ${this.stateDir}.`)
      this.log(out.map((s) => ('damaged' in s ? renderDamagedGroup(s) : renderGroupStatus(s))).join('\n\n'))
    }
    return toStatusResult(out)
  }
}
