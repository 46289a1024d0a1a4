import {Args} from '@oclif/core'
import {status} from '../src/group/GroupOperations.js'
import type {GroupStatus} from '../src/group/GroupStatus.js'
import {BaseCommand} from '../src/ui/BaseCommand.js'
import {renderGroupStatus} from '../src/ui/tables.js'

export default class Status extends BaseCommand {
  static summary = 'Show each clone: state, dirty extents and bytes, % in sync, last sync and fracture; and any operation in progress or interrupted.'
  static examples = ['<%= config.bin %> status', '<%= config.bin %> status db1 --json']
  static args = {group: Args.string({description: 'One group (default: all).'})}

  async run(): Promise<GroupStatus[]> {
    const {args, flags} = await this.parse(Status)
    const ctx = await this.context(flags['state-dir'])
    const names = args.group ? [args.group] : await ctx.store.list()
    const out: GroupStatus[] = []
    // eslint-disable-next-line no-await-in-loop
    for (const n of names) out.push(await status(ctx, n))
    if (!this.jsonEnabled()) {
      if (out.length === 0) this.log(`No clone groups in ${this.stateDir}.`)
      this.log(out.map((s) => renderGroupStatus(s)).join('\n\n'))
    }
    return out
  }
}
