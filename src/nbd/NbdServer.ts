import {chmod, rm} from 'node:fs/promises'
import {connect, createServer, type Server, type Socket} from 'node:net'
import {ByteQueue} from './ByteQueue.js'
import type {ExportBackend} from './ExportBackend.js'
import {
  BLOCK_MAX,
  ClientFlag,
  Cmd,
  CmdFlag,
  Errno,
  type ErrnoName,
  IHAVEOPT,
  Info,
  OPTION_HEADER_SIZE,
  Opt,
  REQUEST_SIZE,
  Rep,
  TxFlag,
  decodeGoData,
  decodeRequest,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoText,
  encodeOptionReply,
  encodeServerGreeting,
  encodeSimpleReply,
} from './protocol.js'

export interface NbdServerOptions {
  exportName?: string
  description?: string
  log?: (message: string) => void
  /** Advertise CAN_MULTI_CONN (default true: every connection sees the same data and flush). */
  multiConn?: boolean
  /** Requests in flight per connection before the socket is paused. */
  maxInflight?: number
}

/** Payloads beyond this are hostile: drop the connection instead of buffering them. */
const MAX_PAYLOAD = 64 * 1024 * 1024
const MAX_OPTION_DATA = 64 * 1024

function errnoFor(error: unknown): number {
  const e = error as {errno?: unknown; code?: unknown}
  const name = (typeof e?.errno === 'string' ? e.errno : typeof e?.code === 'string' ? e.code : 'EIO') as string
  return name in Errno ? Errno[name as ErrnoName] : Errno.EIO
}

class Connection {
  private readonly q = new ByteQueue()
  private phase: 'clientFlags' | 'option' | 'request' | 'payload' | 'closed' = 'clientFlags'
  private noZeroes = false
  private pending?: {type: 'option'; option: number; length: number} | {type: 'write'; req: NonNullable<ReturnType<typeof decodeRequest>>}
  private inflight = 0
  private readonly drained: Array<() => void> = []
  private paused = false
  private disconnecting = false

  constructor(
    private readonly s: Socket,
    private readonly srv: NbdServer,
    private readonly backend: ExportBackend,
  ) {
    s.setNoDelay(true)
    s.on('data', (b) => this.onData(b))
    s.on('error', () => this.close())
    s.on('close', () => void this.finish())
    s.write(encodeServerGreeting())
  }

  private get txFlags(): number {
    let f = TxFlag.HAS_FLAGS | TxFlag.SEND_FLUSH | TxFlag.SEND_FUA | TxFlag.SEND_TRIM | TxFlag.SEND_WRITE_ZEROES
    if (this.srv.multiConn) f |= TxFlag.CAN_MULTI_CONN
    if (this.backend.readOnly) f |= TxFlag.READ_ONLY
    return f
  }

  private drop(why: string): void {
    this.srv.log?.(`nbd: dropping a connection: ${why}`)
    this.close()
  }

  close(): void {
    this.phase = 'closed'
    this.s.destroy()
  }

  private onData(b: Buffer): void {
    if (this.phase === 'closed') return
    this.q.push(b)
    try {
      this.parse()
    } catch (error) {
      this.drop(`parse error: ${(error as Error).message}`)
    }
  }

  private parse(): void {
    for (;;) {
      switch (this.phase) {
        case 'clientFlags': {
          if (this.q.length < 4) return
          const flags = this.q.take(4).readUInt32BE(0)
          if (!(flags & ClientFlag.FIXED_NEWSTYLE) || flags & ~(ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES)) return this.drop(`unsupported client flags ${flags}`)
          this.noZeroes = (flags & ClientFlag.NO_ZEROES) !== 0
          this.phase = 'option'
          break
        }
        case 'option': {
          if (!this.pending) {
            if (this.q.length < OPTION_HEADER_SIZE) return
            const h = this.q.take(OPTION_HEADER_SIZE)
            if (h.readBigUInt64BE(0) !== IHAVEOPT) return this.drop('bad option magic')
            const length = h.readUInt32BE(12)
            if (length > MAX_OPTION_DATA) return this.drop(`option data of ${length} bytes`)
            this.pending = {type: 'option', option: h.readUInt32BE(8), length}
          }
          const p = this.pending
          if (p.type !== 'option' || this.q.length < p.length) return
          this.pending = undefined
          this.handleOption(p.option, this.q.take(p.length))
          if ((this.phase as string) === 'closed') return
          break
        }
        case 'request': {
          if (this.q.length < REQUEST_SIZE) return
          const req = decodeRequest(this.q.take(REQUEST_SIZE))
          if (!req) return this.drop('bad request magic')
          if (req.type === Cmd.WRITE) {
            if (req.length > MAX_PAYLOAD) return this.drop(`write payload of ${req.length} bytes`)
            this.pending = {type: 'write', req}
            this.phase = 'payload'
            break
          }
          if (req.type === Cmd.DISC) {
            this.disconnecting = true
            this.phase = 'closed'
            void this.waitIdle().then(() => this.s.end())
            return
          }
          this.dispatch(req, undefined)
          break
        }
        case 'payload': {
          const p = this.pending
          if (!p || p.type !== 'write') return this.drop('internal: no pending write')
          if (this.q.length < p.req.length) return
          this.pending = undefined
          this.phase = 'request'
          this.dispatch(p.req, this.q.take(p.req.length))
          break
        }
        case 'closed':
          return
      }
      if (this.paused) return
    }
  }

  private reply(option: number, type: number, data?: Buffer): void {
    this.s.write(encodeOptionReply(option, type, data))
  }

  private handleOption(option: number, data: Buffer): void {
    const name = this.srv.exportName
    switch (option) {
      case Opt.EXPORT_NAME: {
        const wanted = data.toString('utf8')
        if (wanted !== '' && wanted !== name) return this.drop(`unknown export "${wanted}"`)
        const b = Buffer.alloc(this.noZeroes ? 10 : 134)
        b.writeBigUInt64BE(BigInt(this.backend.size), 0)
        b.writeUInt16BE(this.txFlags, 8)
        this.s.write(b)
        this.phase = 'request'
        return
      }
      case Opt.ABORT:
        this.reply(option, Rep.ACK)
        this.s.end()
        this.phase = 'closed'
        return
      case Opt.LIST: {
        if (data.length !== 0) return this.reply(option, Rep.ERR_INVALID)
        const n = Buffer.from(name, 'utf8')
        const d = Buffer.alloc(4 + n.length)
        d.writeUInt32BE(n.length, 0)
        n.copy(d, 4)
        this.reply(option, Rep.SERVER, d)
        this.reply(option, Rep.ACK)
        return
      }
      case Opt.INFO:
      case Opt.GO: {
        const go = decodeGoData(data)
        if (!go) return this.reply(option, Rep.ERR_INVALID)
        if (go.name !== '' && go.name !== name) return this.reply(option, Rep.ERR_UNKNOWN)
        this.reply(option, Rep.INFO, encodeInfoExport(this.backend.size, this.txFlags))
        this.reply(option, Rep.INFO, encodeInfoBlockSize())
        if (go.infos.includes(Info.NAME)) this.reply(option, Rep.INFO, encodeInfoText(Info.NAME, name))
        if (go.infos.includes(Info.DESCRIPTION) && this.srv.description) this.reply(option, Rep.INFO, encodeInfoText(Info.DESCRIPTION, this.srv.description))
        this.reply(option, Rep.ACK)
        if (option === Opt.GO) this.phase = 'request'
        return
      }
      default:
        // STARTTLS, STRUCTURED_REPLY, meta contexts, extended headers, anything else.
        this.reply(option, Rep.ERR_UNSUP)
    }
  }

  private sendReply(error: number, cookie: bigint, data?: Buffer): void {
    if (this.s.destroyed) return
    if (data && error === 0) {
      this.s.cork()
      this.s.write(encodeSimpleReply(0, cookie))
      this.s.write(data)
      process.nextTick(() => this.s.uncork())
    } else {
      this.s.write(encodeSimpleReply(error, cookie))
    }
  }

  private dispatch(req: NonNullable<ReturnType<typeof decodeRequest>>, payload: Buffer | undefined): void {
    const {backend} = this
    const offset = Number(req.offset)
    const len = req.length
    const fua = (req.flags & CmdFlag.FUA) !== 0
    const end = offset + len
    const past = req.offset > BigInt(Number.MAX_SAFE_INTEGER) || end > backend.size
    let work: (() => Promise<Buffer | void>) | undefined
    let error = 0
    switch (req.type) {
      case Cmd.READ:
        if (past || len > BLOCK_MAX) error = Errno.EINVAL
        else work = () => backend.read(offset, len)
        break
      case Cmd.WRITE:
        if (backend.readOnly) error = Errno.EPERM
        else if (past) error = Errno.ENOSPC
        else if (len > BLOCK_MAX) error = Errno.EINVAL
        else work = () => backend.write(offset, payload!, fua)
        break
      case Cmd.WRITE_ZEROES:
      case Cmd.TRIM:
        if (backend.readOnly) error = Errno.EPERM
        else if (past) error = Errno.ENOSPC
        else work = req.type === Cmd.TRIM ? () => backend.trim(offset, len, fua) : () => backend.writeZeroes(offset, len, fua)
        break
      case Cmd.FLUSH:
        work = () => backend.flush()
        break
      case Cmd.CACHE:
        if (past) error = Errno.EINVAL
        else work = async () => undefined
        break
      default:
        error = Errno.EINVAL
    }
    if (!work) {
      this.sendReply(error, req.cookie)
      return
    }
    this.inflight++
    if (this.inflight >= this.srv.maxInflight && !this.paused) {
      this.paused = true
      this.s.pause()
    }
    work()
      .then(
        (data) => this.sendReply(0, req.cookie, data instanceof Buffer ? data : undefined),
        (error_: unknown) => {
          const code = errnoFor(error_)
          if (code === Errno.EIO) this.srv.log?.(`nbd: ${['read', 'write', '', 'flush', 'trim', 'cache', 'write-zeroes'][req.type] ?? 'request'} at ${offset}+${len} failed: ${(error_ as Error)?.message ?? error_}`)
          this.sendReply(code, req.cookie)
        },
      )
      .finally(() => {
        this.inflight--
        if (this.paused && this.inflight < this.srv.maxInflight / 2) {
          this.paused = false
          this.s.resume()
          try {
            this.parse()
          } catch (error_) {
            this.drop(`parse error: ${(error_ as Error).message}`)
          }
        }
        if (this.inflight === 0) for (const r of this.drained.splice(0)) r()
      })
  }

  waitIdle(): Promise<void> {
    if (this.inflight === 0) return Promise.resolve()
    return new Promise((r) => this.drained.push(r))
  }

  private async finish(): Promise<void> {
    this.phase = 'closed'
    await this.waitIdle()
    try {
      await this.backend.clientClosed?.()
    } catch (error) {
      this.srv.log?.(`nbd: flush after disconnect failed: ${(error as Error).message}`)
    }
    this.srv.forget(this)
  }

  get closing(): boolean {
    return this.disconnecting
  }
}

/**
 * An NBD server for one export (fixed newstyle; OPT_GO/INFO/LIST/ABORT/EXPORT_NAME; READ,
 * WRITE, FLUSH, TRIM, WRITE_ZEROES, CACHE, DISC; simple replies, out of order, many in flight).
 * Malformed or hostile bytes drop that connection only.
 */
export class NbdServer {
  readonly exportName: string
  readonly description?: string
  readonly log?: (message: string) => void
  readonly multiConn: boolean
  readonly maxInflight: number
  private readonly servers: Server[] = []
  private readonly conns = new Set<Connection>()

  constructor(
    private readonly backend: ExportBackend,
    opts: NbdServerOptions = {},
  ) {
    this.exportName = opts.exportName ?? ''
    this.description = opts.description
    this.log = opts.log
    this.multiConn = opts.multiConn ?? true
    this.maxInflight = opts.maxInflight ?? 64
  }

  get connections(): number {
    return this.conns.size
  }

  forget(c: Connection): void {
    this.conns.delete(c)
  }

  private make(): Server {
    const server = createServer((s) => {
      this.conns.add(new Connection(s, this, this.backend))
    })
    this.servers.push(server)
    return server
  }

  /** Listen on a unix socket (mode 0600). A stale socket file with nobody behind it is replaced. */
  async listenUnix(path: string): Promise<void> {
    const live = await new Promise<boolean>((resolve) => {
      const c = connect(path)
      c.once('connect', () => {
        c.destroy()
        resolve(true)
      })
      c.once('error', () => resolve(false))
    })
    if (live) throw Object.assign(new Error(`${path} is in use by a running server`), {code: 'EADDRINUSE'})
    await rm(path, {force: true})
    const server = this.make()
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(path, () => resolve())
    })
    await chmod(path, 0o600)
  }

  /** Listen on TCP; resolves to the bound port (port 0 picks one). */
  async listenTcp(host: string, port: number): Promise<number> {
    const server = this.make()
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(port, host, () => resolve())
    })
    const addr = server.address()
    return typeof addr === 'object' && addr ? addr.port : port
  }

  /** Stop accepting, let requests in flight finish, flush, close every connection. Waits. */
  async close(): Promise<void> {
    await Promise.all(this.servers.map((s) => new Promise<void>((r) => s.close(() => r()))))
    await Promise.all([...this.conns].map((c) => c.waitIdle()))
    for (const c of this.conns) c.close()
    await this.backend.flush()
  }
}
