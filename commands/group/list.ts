import {statusAll} from '../../src/group/GroupStatus.js'
import {BaseCommand} from '../../src/ui/BaseCommand.js'
import {humanBytes} from '../../src/ui/format.js'
import {type GroupListResult, toGroupListResult} from '../../src/ui/results/results.js'
import {renderTable} from '../../src/ui/tables.js'

export default class GroupList extends BaseCommand {
  static summary = 'List clone groups.'
  static description = 'A group whose group.json cannot be read or trusted is listed as damaged, with its file and the reason (in --json as {name, damaged: {file, reason, code, fix}}).'
  static examples = ['<%= config.bin %> group list', '<%= config.bin %> group list --json']

  async run(): Promise<GroupListResult> {
    const {flags} = await this.parse(GroupList)
    const ctx = await this.context(flags['state-dir'])
    const out = toGroupListResult(await statusAll(ctx))
    if (!this.jsonEnabled()) {
      if (out.length === 0) this.log(`No clone groups in ${this.stateDir}.`)
      else this.log(renderTable(['group', 'source', 'size', 'clones', 'operation'], out.map((g) => ('damaged' in g ? [g.name, `DAMAGED: ${g.damaged.reason}`, '-', '-', '-'] : [g.name, g.source, humanBytes(g.size), String(g.clones), g.operation ?? '-']))))
    }
    return out
  }
}
