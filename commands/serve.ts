import {Flags} from '@oclif/core'
import {GroupServer} from '../src/group/GroupServer.js'
import {UsageError} from '../src/errors/errors.js'
import {parseSize} from '../src/group/GroupAdmin.js'
import {tcpNbdUri, unixNbdUri} from '../src/nbd/nbdUri.js'
import {checkTcpListener, loadServerTls, tlsDirectory, type ServerTls, type ServerTlsFiles} from '../src/nbd/tls.js'
import {showWait} from '../src/ui/wait.js'
import {BaseCommand, rateFlag} from '../src/ui/BaseCommand.js'
import {requiredOperand} from '../src/ui/args.js'

export default class Serve extends BaseCommand {
  static summary = "Serve a group's source over NBD; own the group while running (other commands are carried out by this server)."
  static description = `Hosts reach the source through this NBD export (unix socket by default, mode 0600; TCP only on an address you name). Writes are mirrored to synchronized clones and recorded in the maps of fractured ones; FLUSH and FUA mean durable. While it runs, \`clone sync/fracture/add/remove\`, \`restore\`, \`verify\` and \`status\` from another shell are carried out by this process. An interrupted restore is resumed in the background at start, serving at once. SIGTERM/SIGINT stop accepting, drain, flush, persist and exit 0.

TLS (NBD_OPT_STARTTLS) is offered on every listener once credentials are given: an x509 certificate and key (--tls-cert/--tls-key, or --tls-dir with qemu's file names), pre-shared keys (--tls-psk, psktool format), or both. With --tls-ca (or ca-cert.pem in --tls-dir) clients must present a certificate signed by that CA. Without --tls-required, clients that do not ask for TLS are still served in plaintext; with it they are refused.

A TCP listener that authenticates no client (no TLS, TLS not required, or certificates without --tls-ca) lets anyone who reaches the port read and overwrite the source: on an address other than loopback serve refuses to start (exit 5) unless given --allow-unauthenticated; on loopback it warns, since every local user can connect (the unix socket is private to its owner).`
  static examples = [
    '<%= config.bin %> serve db1',
    "qemu-io -f raw 'nbd+unix:///?socket=/var/lib/clonectl/groups/db1/nbd.sock' -c 'read 0 1M'",
    '<%= config.bin %> serve db1 --listen 0.0.0.0:10809 --tls-dir /etc/pki/qemu --tls-required   # ca-cert.pem there: client certificates required',
    "nbdinfo 'nbds://db1-host:10809/?tls-certificates=/etc/pki/qemu'",
    '<%= config.bin %> serve db1 --listen 0.0.0.0:10809 --tls-psk /etc/clonectl/keys.psk --tls-required',
    '<%= config.bin %> serve db1 --listen [::]:10809 --tls-cert server.pem --tls-key server-key.pem --tls-ca ca.pem --tls-required',
    '<%= config.bin %> serve db1 --listen 10.0.0.5:10809 --allow-unauthenticated   # a closed lab network: anyone there can write the source',
  ]
  static enableJsonFlag = false
  static flags = {
    socket: Flags.string({summary: 'Unix socket path for NBD (default: nbd.sock in the group directory).', helpValue: 'PATH'}),
    listen: Flags.string({summary: 'Also listen on TCP at HOST:PORT (the unix socket stays; --tcp-only drops it).', helpValue: 'HOST:PORT'}),
    'tcp-only': Flags.boolean({summary: 'With --listen: serve NBD on TCP only, no unix socket (the control socket stays).', dependsOn: ['listen'], exclusive: ['socket']}),
    'read-only': Flags.boolean({summary: 'Refuse host writes (EPERM).'}),
    'max-buffer': Flags.string({summary: 'READ/WRITE payload bytes held across all connections (default 256M); past it, clients wait (their sockets are not read).', helpValue: 'BYTES'}),
    'max-connections': Flags.integer({summary: 'NBD connections open at once (default 64); more are closed at once and logged.', min: 1, helpValue: 'N'}),
    'payload-timeout': Flags.integer({summary: 'Drop a connection whose WRITE payload stops arriving, or that takes none of its replies, for this many seconds (default 60).', min: 1, helpValue: 'SECONDS'}),
    rate: {...rateFlag, summary: 'Limit the copying of a restore resumed at start to this many bytes per second (e.g. 50M).'},
    'tls-cert': Flags.string({summary: 'Server certificate (PEM) for NBD over TLS; needs --tls-key.', helpValue: 'PATH', helpGroup: 'TLS'}),
    'tls-key': Flags.string({summary: "The server certificate's private key (PEM, unencrypted).", helpValue: 'PATH', helpGroup: 'TLS'}),
    'tls-ca': Flags.string({summary: 'CA certificate: clients must present a certificate it signed.', helpValue: 'PATH', helpGroup: 'TLS'}),
    'tls-psk': Flags.string({summary: 'Pre-shared keys for TLS-PSK, psktool format (identity:hexkey lines).', helpValue: 'PATH', helpGroup: 'TLS'}),
    'tls-dir': Flags.string({summary: 'qemu-style credentials directory: server-cert.pem, server-key.pem, ca-cert.pem (client certificates then required), keys.psk.', helpValue: 'DIR', helpGroup: 'TLS'}),
    'tls-required': Flags.boolean({summary: 'Refuse clients that do not start TLS (needs TLS credentials).', helpGroup: 'TLS'}),
    'allow-unauthenticated': Flags.boolean({summary: 'Serve --listen on a non-loopback address although it authenticates no client: anyone who reaches the port can read and overwrite the source.', helpGroup: 'TLS'}),
  }
  static args = {group: requiredOperand('The group.')}

  async run(): Promise<void> {
    const {args, flags} = await this.parse(Serve)
    const ctx = await this.context(flags['state-dir'])
    let listen: {host: string; port: number} | undefined
    if (flags.listen) {
      const m = /^(.*):(\d+)$/.exec(flags.listen)
      if (!m) throw new UsageError(`--listen "${flags.listen}" is not HOST:PORT`)
      listen = {host: m[1].replace(/^\[|\]$/g, ''), port: Number(m[2])}
    }
    const tls = await this.tlsCredentials(flags)
    const required = flags['tls-required']
    if (listen) for (const w of checkTcpListener({listen: flags.listen!, host: listen.host, tls, required, allowUnauthenticated: flags['allow-unauthenticated']})) this.warnLine(w)
    const server = await GroupServer.start(ctx, args.group, {
      command: this.commandLine(),
      socket: flags.socket,
      listen,
      tcpOnly: flags['tcp-only'],
      readOnly: flags['read-only'],
      tls: tls && {options: tls.options, required},
      rate: flags.rate ? parseSize(flags.rate, '--rate') : undefined,
      limits: {
        maxBufferBytes: flags['max-buffer'] ? parseSize(flags['max-buffer'], '--max-buffer') : undefined,
        maxConnections: flags['max-connections'],
        payloadTimeoutMs: flags['payload-timeout'] === undefined ? undefined : flags['payload-timeout'] * 1000,
      },
      log: (m) => process.stderr.write(`${m}\n`),
    })
    const secure = Boolean(tls && required)
    const tlsNote = tls ? ` (TLS ${tls.kinds.join(' + ')}${tls.verifiesClients ? ', client certificates verified' : ''}, ${required ? 'required' : 'optional'})` : ''
    process.stderr.write(`serving group ${args.group}${server.nbdSocket ? ` on ${unixNbdUri(server.nbdSocket, secure)}` : ''}${server.tcpPort && listen ? ` ${server.nbdSocket ? 'and' : 'on'} ${tcpNbdUri(listen.host, server.tcpPort, secure)}` : ''}${tlsNote}\n`)
    await new Promise<void>((resolve) => {
      const stop = (sig: string): void => {
        const endWait = showWait(`${sig}: draining and stopping`)
        process.off('SIGINT', stop)
        process.off('SIGTERM', stop)
        void server.stop().finally(() => {
          endWait()
          resolve()
        })
      }
      process.on('SIGINT', stop)
      process.on('SIGTERM', stop)
    })
  }

  /** The TLS credentials the flags name, read and checked; undefined when none are given. */
  private async tlsCredentials(flags: {'tls-cert'?: string; 'tls-key'?: string; 'tls-ca'?: string; 'tls-psk'?: string; 'tls-dir'?: string; 'tls-required': boolean}): Promise<ServerTls | undefined> {
    let files: ServerTlsFiles
    if (flags['tls-dir']) {
      const clash = (['tls-cert', 'tls-key', 'tls-ca', 'tls-psk'] as const).filter((f) => flags[f] !== undefined)
      if (clash.length) throw new UsageError(`--tls-dir cannot be combined with ${clash.map((f) => `--${f}`).join(', ')}`, 'name the files either in a directory (--tls-dir) or one by one')
      files = await tlsDirectory(flags['tls-dir'])
    } else files = {cert: flags['tls-cert'], key: flags['tls-key'], ca: flags['tls-ca'], pskFile: flags['tls-psk']}
    if (!files.cert && !files.key && !files.ca && !files.pskFile) {
      if (flags['tls-required']) throw new UsageError('--tls-required needs TLS credentials', 'pass --tls-cert and --tls-key, --tls-dir DIR, or --tls-psk FILE')
      return undefined
    }
    return loadServerTls(files)
  }
}
