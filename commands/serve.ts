import {Args, Flags} from '@oclif/core'
import {GroupServer} from '../src/group/GroupServer.js'
import {UsageError} from '../src/errors/errors.js'
import {parseSize} from '../src/group/GroupAdmin.js'
import {BaseCommand, rateFlag} from '../src/ui/BaseCommand.js'

export default class Serve extends BaseCommand {
  static summary = "Serve a group's source over NBD; own the group while running (other commands are carried out by this server)."
  static description = `Hosts reach the source through this NBD export (unix socket by default, mode 0600; TCP only on an address you name). Writes are mirrored to synchronized clones and recorded in the maps of fractured ones; FLUSH and FUA mean durable. While it runs, \`clone sync/fracture/add/remove\`, \`restore\`, \`verify\` and \`status\` from another shell are carried out by this process. An interrupted restore is resumed in the background at start, serving at once. SIGTERM/SIGINT stop accepting, drain, flush, persist and exit 0.`
  static examples = [
    '<%= config.bin %> serve db1',
    "qemu-io -f raw 'nbd+unix:///?socket=/var/lib/clonectl/groups/db1/nbd.sock' -c 'read 0 1M'",
    '<%= config.bin %> serve db1 --listen 127.0.0.1:10809',
  ]
  static enableJsonFlag = false
  static flags = {
    socket: Flags.string({summary: 'Unix socket path for NBD (default: nbd.sock in the group directory).', helpValue: 'PATH'}),
    listen: Flags.string({summary: 'Also (or instead) listen on TCP at HOST:PORT.', helpValue: 'HOST:PORT'}),
    'read-only': Flags.boolean({summary: 'Refuse host writes (EPERM).'}),
    rate: {...rateFlag, summary: 'Limit the copying of a restore resumed at start to this many bytes per second (e.g. 50M).'},
  }
  static args = {group: Args.string({description: 'The group.', required: true})}

  async run(): Promise<void> {
    const {args, flags} = await this.parse(Serve)
    const ctx = await this.context(flags['state-dir'])
    let listen: {host: string; port: number} | undefined
    if (flags.listen) {
      const m = /^(.*):(\d+)$/.exec(flags.listen)
      if (!m) throw new UsageError(`--listen "${flags.listen}" is not HOST:PORT`)
      listen = {host: m[1].replace(/^\[|\]$/g, ''), port: Number(m[2])}
      if (!['127.0.0.1', 'localhost', '::1'].includes(listen.host))
        this.warnLine(`serving ${flags.listen} over plain TCP: anyone who can reach it can read and overwrite the source`)
    }
    const server = await GroupServer.start(ctx, args.group, {
      command: this.commandLine(),
      socket: flags.socket,
      listen,
      readOnly: flags['read-only'],
      rate: flags.rate ? parseSize(flags.rate, '--rate') : undefined,
      log: (m) => process.stderr.write(`${m}\n`),
    })
    process.stderr.write(`serving group ${args.group}${server.nbdSocket ? ` on nbd+unix:///?socket=${server.nbdSocket}` : ''}${server.tcpPort ? ` and nbd://${listen?.host}:${server.tcpPort}/` : ''}\n`)
    await new Promise<void>((resolve) => {
      const stop = (sig: string): void => {
        process.stderr.write(`${sig}: draining and stopping\n`)
        process.off('SIGINT', stop)
        process.off('SIGTERM', stop)
        void server.stop().finally(resolve)
      }
      process.on('SIGINT', stop)
      process.on('SIGTERM', stop)
    })
  }
}
