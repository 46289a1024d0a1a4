import {Flags} from '@oclif/core'
import {createGroup, parseSize} from '../../src/group/GroupAdmin.js'
import {BaseCommand} from '../../src/ui/BaseCommand.js'
import {humanBytes} from '../../src/ui/format.js'
import {type GroupCreateResult, toGroupCreateResult} from '../../src/ui/results/results.js'
import {requiredOperand} from '../../src/ui/args.js'

export default class GroupCreate extends BaseCommand {
  static summary = 'Create a clone group for a source volume (an image file or a block device).'
  static description = 'Records the source and its fingerprint in the state directory. No volume data is read or written.'
  static examples = ['<%= config.bin %> group create db1 --source /srv/db1.img', '<%= config.bin %> group create db1 --source /dev/sdb --extent-size 1M']
  static flags = {
    source: Flags.string({summary: 'The source volume: an image file or a block device.', required: true, helpValue: 'PATH'}),
    'extent-size': Flags.string({summary: 'Tracking unit, a power of two from 4K to 64M.', default: '64K', helpValue: 'SIZE'}),
  }
  static args = {group: requiredOperand('Name of the new group.')}

  async run(): Promise<GroupCreateResult> {
    const {args, flags} = await this.parse(GroupCreate)
    const ctx = await this.context(flags['state-dir'])
    const record = await createGroup(ctx, {name: args.group, sourcePath: flags.source, extentSize: parseSize(flags['extent-size'], '--extent-size')})
    if (!this.jsonEnabled()) this.log(`Created group ${record.name}: source ${record.source.path} (${humanBytes(record.source.fingerprint.size)}), extent size ${humanBytes(record.extentSize)}`)
    return toGroupCreateResult(record)
  }
}
