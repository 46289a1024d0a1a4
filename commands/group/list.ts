import {groupStatus} from '../../src/group/GroupStatus.js'
import {BaseCommand} from '../../src/ui/BaseCommand.js'
import {humanBytes} from '../../src/ui/format.js'
import {renderRows} from '../../src/ui/tables.js'

export interface GroupListEntry {
  name: string
  source: string
  size: number
  clones: number
  operation?: string
}

export default class GroupList extends BaseCommand {
  static summary = 'List clone groups.'
  static examples = ['<%= config.bin %> group list', '<%= config.bin %> group list --json']

  async run(): Promise<GroupListEntry[]> {
    const {flags} = await this.parse(GroupList)
    const ctx = await this.context(flags['state-dir'])
    const out: GroupListEntry[] = []
    for (const name of await ctx.store.list()) {
      // eslint-disable-next-line no-await-in-loop
      const s = await groupStatus(ctx, name)
      out.push({name, source: s.source.path, size: s.source.size, clones: s.clones.length, operation: s.operation ? `${s.operation.kind} ${s.operation.state}` : undefined})
    }
    if (!this.jsonEnabled()) {
      if (out.length === 0) this.log(`No clone groups in ${this.stateDir}.`)
      else this.log(renderRows(['group', 'source', 'size', 'clones', 'operation'], out.map((g) => [g.name, g.source, humanBytes(g.size), String(g.clones), g.operation ?? '-'])))
    }
    return out
  }
}
