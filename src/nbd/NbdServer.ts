/**
 * An NBD server for one export (DESIGN §5).
 *
 * Notes on the design:
 * - Fixed newstyle only. Options: GO and INFO (NBD_INFO_EXPORT and NBD_INFO_BLOCK_SIZE
 *   always, NAME and DESCRIPTION when asked), EXPORT_NAME, LIST, ABORT, STRUCTURED_REPLY,
 *   LIST/SET_META_CONTEXT when the server has a MetaContextSource (BlockStatus.ts), and
 *   STARTTLS when TLS is configured; everything else (extended headers, …) is
 *   NBD_REP_ERR_UNSUP.
 * - Once structured replies are negotiated, READ is answered by one OFFSET_DATA chunk (or an
 *   ERROR chunk) and BLOCK_STATUS by one chunk per selected context; every other command
 *   keeps simple replies, as the spec allows.
 * - TLS (the spec's FORCEDTLS when `tls.required`, else SELECTIVETLS with every export
 *   open to plaintext too): STARTTLS is answered ACK, parsing stops, and once the ACK is
 *   out the socket is handed to a TLS server socket; option haggling goes on inside TLS
 *   and every later read and write goes through it (`this.s` is replaced). A client may
 *   send nothing after STARTTLS until it has the ACK, so bytes already queued then are
 *   hostile: dropped. In FORCEDTLS every option but STARTTLS and ABORT gets
 *   ERR_TLS_REQD before TLS, and EXPORT_NAME (which cannot fail) drops the connection.
 *   The handshake is done by a `tls.Server` made for the connection and never listening:
 *   only its connection path verifies client certificates (a bare TLSSocket accepts any).
 *   Transmission does not know about TLS: no per-request cost for plaintext.
 * - Transmission: READ, WRITE, FLUSH, TRIM, WRITE_ZEROES, DISC. Requests are parsed as
 *   they arrive and handed to the backend at once: many are in flight, replies go out in
 *   the order they complete. Per connection at most `maxInflight` requests and
 *   `maxInflightBytes` of READ/WRITE data are in flight; past either, or when the socket's
 *   unsent replies pass `maxBacklogBytes`, the server stops reading that socket until
 *   things drain (back-pressure reaches the client through the socket).
 * - Across connections, READ/WRITE payload bytes come from one PayloadBudget
 *   (`maxBufferBytes`): a WRITE's from its header until its backend write settled, a READ's
 *   from dispatch until its reply has been handed to the kernel — replies a client does not
 *   read keep holding them. A request that gets no bytes waits, its connection paused.
 *   A WRITE payload that stops arriving, or replies left untaken, for `payloadTimeoutMs`
 *   drop the connection; past `maxConnections` new connections are closed and logged.
 * - Received bytes stay in a list of socket chunks. A request header is read in place when
 *   it lies in one chunk; a write payload within one chunk is passed on as a view of it, so
 *   a 32 MiB write that arrives in hundreds of chunks costs one copy, never O(n²).
 * - Replies completed in one turn of the event loop are sent together (one write, or one
 *   writev when read data is large) from a setImmediate.
 * - Validation, in this order: unknown command → EINVAL; a flag the command does not take
 *   (FUA is taken by all, NO_HOLE by WRITE_ZEROES) → EINVAL; WRITE/TRIM/WRITE_ZEROES on a
 *   read-only export → EPERM; past the end → EINVAL for READ, ENOSPC for the writes;
 *   READ/WRITE longer than 32 MiB → EINVAL; BLOCK_STATUS with no context selected, of
 *   length 0, past the end, or with a flag other than FUA/REQ_ONE → EINVAL. A rejected WRITE's payload is read and
 *   dropped; a payload over 64 MiB, a bad magic, or bad client flags drop the connection —
 *   that one only. Zero-length requests succeed without reaching the backend.
 * - Disconnect (DISC, EOF, error, drop, or close()): requests in flight complete first,
 *   then the backend's clientClosed() (else flush()) runs once for every connection that
 *   reached transmission, since nbdcopy sends no FLUSH unless asked.
 */
import {EventEmitter} from 'node:events'
import {lstat, rm} from 'node:fs/promises'
import {connect, createServer, type Server, type Socket} from 'node:net'
import {createServer as createTlsServer, type TLSSocket, type TlsOptions} from 'node:tls'
import {RefusedError, errnoOf} from '../errors/errors.js'
import {collectGarbage, handBackMemory} from '../io/handBackMemory.js'
import {listenPrivate} from '../io/privateSocket.js'
import {ByteQueue} from './ByteQueue.js'
import {PayloadBudget, type Grant} from './PayloadBudget.js'
import {PayloadPool} from './PayloadPool.js'
import type {ExportBackend} from './ExportBackend.js'
import {type MetaContextSource, finishRuns, selectContexts} from './BlockStatus.js'
import {
  BLOCK_MAX,
  ClientFlag,
  Cmd,
  CmdFlag,
  Errno,
  IHAVEOPT,
  Info,
  OPTION_HEADER_SIZE,
  Opt,
  REQUEST_SIZE,
  Rep,
  type RequestHeader,
  SIMPLE_REPLY_SIZE,
  TxFlag,
  cmdName,
  ERROR_CHUNK_SIZE,
  OFFSET_DATA_HEAD,
  ReplyType,
  STRUCTURED_REPLY_SIZE,
  decodeGoData,
  decodeMetaContextRequest,
  encodeBlockStatusReply,
  encodeMetaContextReply,
  encodeExportNameReply,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoText,
  encodeOptionReply,
  encodeServerGreeting,
  encodeServerReplyData,
  errnoName,
  nbdErrnoOf,
  optName,
  readRequestHeader,
  writeErrorChunk,
  writeOffsetDataHead,
  writeSimpleReplyHeader,
  writeStructuredHeader,
} from './protocol.js'

export interface NbdServerOptions {
  /** The export's name (default ''); the empty name also reaches it. */
  exportName?: string
  /** Sent as NBD_INFO_DESCRIPTION and in NBD_OPT_LIST replies. */
  description?: string
  /** Connections dropped, backend errors, disconnect flushes that failed. */
  log?: (message: string) => void
  /** Advertise CAN_MULTI_CONN (default true: every connection sees the same data and flush). */
  multiConn?: boolean
  /** Requests in flight per connection before the server stops reading it (default 64). */
  maxInflight?: number
  /** READ/WRITE bytes in flight per connection before it stops reading (default 128 MiB). */
  maxInflightBytes?: number
  /** Unsent reply bytes per connection before it stops reading (default 64 MiB). */
  maxBacklogBytes?: number
  /** A client that has not finished the handshake (TLS included) by then is dropped (default 60 s). */
  handshakeTimeoutMs?: number
  /**
   * READ/WRITE payload bytes held across all connections (default 256 MiB; see
   * PayloadBudget): past it, connections wait for bytes and stop reading their sockets.
   */
  maxBufferBytes?: number
  /** Connections open at once; more are closed at accept and logged (default 64). */
  maxConnections?: number
  /**
   * A WRITE payload that stops arriving, or replies the client stops taking, for this long
   * drop the connection and free its bytes (default 60 s).
   */
  payloadTimeoutMs?: number
  /**
   * Once the payload budget has drained after a burst (more than the pool keeps) and stays
   * empty this long, hand memory back (default 2 s; see handBackMemory).
   */
  handBackIdleMs?: number
  /**
   * Offer NBD_OPT_STARTTLS with these Node TLS server options (see loadServerTls). With
   * `required`, refuse everything but STARTTLS and ABORT until TLS is up (FORCEDTLS).
   * It applies to every listener, the unix socket too.
   */
  tls?: {options: TlsOptions; required: boolean}
  /** Offer meta contexts and answer NBD_CMD_BLOCK_STATUS from this source. */
  metaContexts?: MetaContextSource
}

/** A WRITE claiming more than this is hostile or broken: drop it instead of buffering. */
const MAX_PAYLOAD = 64 * 1024 * 1024
/** Option data beyond this drops the connection (names are at most 4 KiB by the spec). */
const MAX_OPTION_DATA = 64 * 1024
/** Options per connection before it is dropped (a client looping on LIST, say). */
const MAX_OPTIONS = 1024
/** Read data up to this size is copied into the batch's reply buffer; larger goes by writev. */
const INLINE_DATA_MAX = 16 * 1024
/** How long a graceful close waits for the client to take the last replies. */
const END_GRACE_MS = 10_000
/** A dead connection's payload of this many bytes goes back to the budget after a GC (giveAfterGc). */
const GC_ON_CLOSE_BYTES = 16 * 1024 * 1024
const IHAVEOPT_HI = Number(IHAVEOPT >> 32n)
const IHAVEOPT_LO = Number(IHAVEOPT & 0xffffffffn)


/** One request from parse to reply. */
class Req implements RequestHeader {
  flags = 0
  type = 0
  cookieHi = 0
  cookieLo = 0
  offset = 0
  length = 0
  /** NBD errno of the reply (0: success). */
  error = 0
  /** A WRITE payload's buffer from the server's PayloadPool (when it spanned socket chunks). */
  pooled?: Buffer = undefined
  /** WRITE: the payload; READ: the data to send back. */
  data: Buffer | undefined = undefined
  /** Bytes this request holds while in flight (counted against maxInflightBytes). */
  cost = 0
  /** Bytes of the server's PayloadBudget this request holds, and from which part. */
  held = 0
  grant: Grant = 'main'
  /** `data` is the whole encoded reply (BLOCK_STATUS chunks): no header to add. */
  raw = false
}

/** starttls: the ACK is going out or the TLS handshake runs; nothing is parsed. */
type Phase = 'flags' | 'options' | 'starttls' | 'transmission' | 'ending' | 'dead'

class Connection {
  readonly finished: Promise<void>
  /** When the client connected. */
  readonly since = new Date()
  /** Who: a TCP peer address, or the unix socket it came in on. */
  readonly peer: string
  private resolveFinished!: () => void
  private phase: Phase = 'flags'
  private readonly q = new ByteQueue()
  private noZeroes = false
  private options = 0
  private pendingOption: {option: number; length: number} | undefined
  private pendingWrite: Req | undefined
  /** A READ or WRITE parsed and waiting for PayloadBudget bytes (its connection is paused). */
  private awaiting: Req | undefined
  private budgetWait = false
  /** PayloadBudget bytes this connection's requests hold. */
  private held = 0
  /** Reply batches handed to the socket, not yet written out (their requests hold bytes). */
  private readonly unsent = new Set<Req[]>()
  /** Armed while a WRITE payload is arriving, or while replies wait in the socket's buffer. */
  private payloadTimer: NodeJS.Timeout | undefined
  private replyTimer: NodeJS.Timeout | undefined
  private inflight = 0
  private inflightBytes = 0
  private paused = false
  private pumping = false
  private replies: Req[] = []
  private flushScheduled = false
  private reachedTransmission = false
  private closeHandled = false
  private size = 0
  private txFlags = 0
  private timer: NodeJS.Timeout | undefined
  private idleWaiter: (() => void) | undefined
  /** Reads and writes go here: the accepted socket, or the TLS socket over it after STARTTLS. */
  private s: Socket
  /** TLS is up (STARTTLS succeeded). */
  private secure = false
  /** NBD_OPT_STRUCTURED_REPLY was acknowledged. */
  private structured = false
  /** Meta contexts chosen by SET_META_CONTEXT (id, name), and the export they were chosen for. */
  private metaContexts: Array<{id: number; name: string}> = []
  private metaExport = ''
  private readonly flushBound = (): void => this.flushReplies()
  private readonly onData = (b: Buffer): void => {
    if (this.phase === 'ending' || this.phase === 'dead') return
    this.q.push(b)
    this.payloadTimer?.refresh()
    this.pump()
  }
  private readonly onEndBound = (): void => this.onEnd()
  private readonly onDrain = (): void => this.maybeResume()
  private readonly onError = (e: Error): void => {
    const code = errnoOf(e)
    if (code !== 'ECONNRESET' && code !== 'EPIPE') this.log(`socket error: ${e.message}`)
  }
  private readonly onCloseBound = (): void => this.onClose()

  constructor(
    private readonly raw: Socket,
    private readonly srv: NbdServer,
    private readonly backend: ExportBackend,
    readonly id: number,
    unixPath?: string,
  ) {
    this.finished = new Promise((r) => (this.resolveFinished = r))
    this.peer = unixPath !== undefined ? `unix socket ${unixPath}` : `${raw.remoteAddress?.includes(':') ? `[${raw.remoteAddress}]` : raw.remoteAddress}:${raw.remotePort}`
    this.s = raw
    raw.setNoDelay(true)
    this.attach(raw)
    this.timer = setTimeout(() => this.drop('handshake not finished in time'), srv.handshakeTimeoutMs)
    this.timer.unref()
    raw.write(encodeServerGreeting())
  }

  private attach(s: Socket): void {
    s.on('data', this.onData)
    s.on('end', this.onEndBound)
    s.on('drain', this.onDrain)
    s.on('error', this.onError)
    s.on('close', this.onCloseBound)
  }

  /** Never throws: a failing log callback must not take the connection down. */
  private log(message: string): void {
    try {
      this.srv.log?.(`nbd: connection ${this.id}: ${message}`)
    } catch {
      // nowhere left to report it
    }
  }

  /** Hard disconnect: this connection only. */
  private drop(why: string): void {
    if (this.phase === 'dead') return
    this.log(`dropped: ${why}`)
    this.phase = 'dead'
    this.q.clear()
    this.s.destroy()
    if (this.raw !== this.s) this.raw.destroy()
  }

  // -------------------------------------------------------------------------------------
  // Parsing

  private pump(): void {
    if (this.pumping) return
    this.pumping = true
    try {
      while (!this.paused && this.step()) {
        // each step consumed one message
      }
    } catch (error) {
      this.drop(`internal error (a bug): ${describe(error, true)}`)
    } finally {
      this.pumping = false
    }
  }

  /** Parse one message; false when more bytes are needed or input is over. */
  private step(): boolean {
    switch (this.phase) {
      case 'flags': {
        if (this.q.length < 4) return false
        const b = this.q.header(4)
        const flags = b.readUInt32BE(this.q.pos)
        const known = ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES
        if (!(flags & ClientFlag.FIXED_NEWSTYLE) || flags & ~known) {
          this.drop(`client flags 0x${flags.toString(16)} (fixed newstyle required, no unknown bits)`)
          return false
        }
        this.noZeroes = (flags & ClientFlag.NO_ZEROES) !== 0
        this.phase = 'options'
        return true
      }
      case 'options':
        return this.stepOption()
      case 'transmission':
        return this.stepRequest()
      default:
        return false
    }
  }

  private stepOption(): boolean {
    if (!this.pendingOption) {
      if (this.q.length < OPTION_HEADER_SIZE) return false
      const b = this.q.header(OPTION_HEADER_SIZE)
      const p = this.q.pos
      if (b.readUInt32BE(p) !== IHAVEOPT_HI || b.readUInt32BE(p + 4) !== IHAVEOPT_LO) {
        this.drop('bad option magic')
        return false
      }
      const option = b.readUInt32BE(p + 8)
      const length = b.readUInt32BE(p + 12)
      if (length > MAX_OPTION_DATA) {
        this.drop(`${optName(option)} with ${length} bytes of data (limit ${MAX_OPTION_DATA})`)
        return false
      }
      if (++this.options > MAX_OPTIONS) {
        this.drop(`more than ${MAX_OPTIONS} options`)
        return false
      }
      this.pendingOption = {option, length}
    }
    const {option, length} = this.pendingOption
    if (this.q.length < length) return false
    this.pendingOption = undefined
    this.handleOption(option, this.q.take(length))
    return this.phase === 'options' || this.phase === 'transmission'
  }

  private stepRequest(): boolean {
    let req = this.pendingWrite ?? this.awaiting
    if (!req) {
      if (this.q.length < REQUEST_SIZE) return false
      const b = this.q.header(REQUEST_SIZE)
      req = readRequestHeader(b, this.q.pos, new Req())
      if (!req) {
        this.drop('bad request magic')
        return false
      }
      if (req.type === Cmd.DISC) {
        this.beginEnding()
        return false
      }
      if (req.type === Cmd.WRITE && req.length > MAX_PAYLOAD) {
        this.drop(`write of ${req.length} bytes (limit ${MAX_PAYLOAD})`)
        return false
      }
      // Payload bytes are budgeted: a WRITE's as it arrives (even one to be refused), a READ's if it will run.
      const needs = req.type === Cmd.WRITE || (req.type === Cmd.READ && req.length > 0 && this.validate(req) === 0)
      if (!needs) {
        this.dispatch(req)
        return true
      }
    }
    if (req !== this.pendingWrite) {
      if (!this.takeBudget(req)) {
        this.awaiting = req
        this.waitForBudget()
        return false
      }
      this.awaiting = undefined
      if (req.type !== Cmd.WRITE) {
        this.dispatch(req)
        return true
      }
      this.pendingWrite = req
      this.armPayloadTimer(req)
    }
    if (this.q.length < req.length) return false
    this.pendingWrite = undefined
    clearTimeout(this.payloadTimer)
    this.payloadTimer = undefined
    req.error = this.validate(req)
    if (req.error) {
      this.q.skip(req.length)
      this.release(req)
    } else {
      const r = req
      r.data = this.q.take(r.length, (n) => (r.pooled = this.srv.payloads.get(n)))
    }
    this.dispatch(req)
    return true
  }

  // -------------------------------------------------------------------------------------
  // The server-wide payload budget and the payload time-out

  private takeBudget(r: Req): boolean {
    const g = this.srv.budget.take(r.length, this.held)
    if (!g) return false
    r.grant = g
    r.held = r.length
    this.held += r.length
    return true
  }

  /** Give back what the request holds (idempotent). */
  private release(r: Req): void {
    if (r.held === 0) return
    if (this.phase === 'dead' && r.held >= GC_ON_CLOSE_BYTES) this.srv.giveAfterGc(r.held, r.grant)
    else this.srv.budget.give(r.held, r.grant)
    this.held -= r.held
    r.held = 0
  }

  private waitForBudget(): void {
    if (this.budgetWait) return
    this.budgetWait = true
    this.pause()
    this.srv.budget.wait(() => {
      this.budgetWait = false
      this.maybeResume()
    })
  }

  private armPayloadTimer(r: Req): void {
    const ms = this.srv.payloadTimeoutMs
    this.payloadTimer = setTimeout(() => this.drop(`WRITE payload stalled: ${this.q.length} of ${r.length} bytes came, then nothing for ${ms / 1000} s`), ms)
    this.payloadTimer.unref()
  }

  /** Replies sit unsent in the socket's buffer: the client must take some within the time-out. */
  private watchReplies(): void {
    if (this.s.writableLength === 0) {
      clearTimeout(this.replyTimer)
      this.replyTimer = undefined
    } else if (this.replyTimer) this.replyTimer.refresh()
    else {
      const ms = this.srv.payloadTimeoutMs
      this.replyTimer = setTimeout(() => this.drop(`the client took none of its replies for ${ms / 1000} s (${this.s.writableLength} bytes unsent)`), ms)
      this.replyTimer.unref()
    }
  }

  // -------------------------------------------------------------------------------------
  // Option haggling

  private optionReply(option: number, type: number, data?: Buffer): void {
    this.s.write(encodeOptionReply(option, type, data))
  }

  private nameMatches(name: string): boolean {
    return name === '' || name === this.srv.exportName
  }

  private handleOption(option: number, data: Buffer): void {
    const {srv, backend} = this
    if (srv.tls?.required && !this.secure && option !== Opt.STARTTLS && option !== Opt.ABORT) {
      // EXPORT_NAME has no error reply: the spec says terminate.
      if (option === Opt.EXPORT_NAME) return this.drop('NBD_OPT_EXPORT_NAME before STARTTLS (TLS is required)')
      return this.optionReply(option, Rep.ERR_TLS_REQD, Buffer.from('TLS is required: send NBD_OPT_STARTTLS first'))
    }
    switch (option) {
      case Opt.EXPORT_NAME: {
        const wanted = data.toString('utf8')
        // No error reply exists for EXPORT_NAME: the spec says close.
        if (!this.nameMatches(wanted)) return this.drop(`NBD_OPT_EXPORT_NAME for unknown export "${wanted}"`)
        this.enterTransmission()
        this.s.write(encodeExportNameReply(this.size, this.txFlags, this.noZeroes))
        return
      }
      case Opt.ABORT:
        this.phase = 'ending'
        this.s.end(encodeOptionReply(option, Rep.ACK), () => this.s.destroy())
        return
      case Opt.LIST:
        if (data.length !== 0) return this.optionReply(option, Rep.ERR_INVALID, Buffer.from('NBD_OPT_LIST takes no data'))
        this.s.cork()
        this.optionReply(option, Rep.SERVER, encodeServerReplyData(srv.exportName, srv.description ?? ''))
        this.optionReply(option, Rep.ACK)
        this.s.uncork()
        return
      case Opt.INFO:
      case Opt.GO: {
        const go = decodeGoData(data)
        if (!go) return this.optionReply(option, Rep.ERR_INVALID, Buffer.from(`malformed ${optName(option)} data`))
        if (!this.nameMatches(go.name)) return this.optionReply(option, Rep.ERR_UNKNOWN, Buffer.from(`no export named "${go.name}"`))
        const flags = this.computeTxFlags()
        this.s.cork()
        // qemu refuses a GO reply without NBD_INFO_EXPORT; block sizes go whether asked or not.
        this.optionReply(option, Rep.INFO, encodeInfoExport(backend.size, flags))
        this.optionReply(option, Rep.INFO, encodeInfoBlockSize())
        if (go.infos.includes(Info.NAME)) this.optionReply(option, Rep.INFO, encodeInfoText(Info.NAME, srv.exportName))
        if (go.infos.includes(Info.DESCRIPTION) && srv.description !== undefined) this.optionReply(option, Rep.INFO, encodeInfoText(Info.DESCRIPTION, srv.description))
        this.optionReply(option, Rep.ACK)
        if (option === Opt.GO) {
          // Contexts chosen for another name of this export are kept; the spec lets either go.
          if (!this.nameMatches(this.metaExport)) this.metaContexts = []
          this.enterTransmission()
        }
        this.s.uncork()
        return
      }
      case Opt.STRUCTURED_REPLY:
        if (data.length !== 0) return this.optionReply(option, Rep.ERR_INVALID, Buffer.from('NBD_OPT_STRUCTURED_REPLY takes no data'))
        if (this.structured) return this.optionReply(option, Rep.ERR_INVALID, Buffer.from('structured replies are already negotiated'))
        this.structured = true
        return this.optionReply(option, Rep.ACK)
      case Opt.LIST_META_CONTEXT:
      case Opt.SET_META_CONTEXT:
        return this.metaContextOption(option, data)
      case Opt.STARTTLS:
        if (!srv.tls) return this.optionReply(option, Rep.ERR_UNSUP, Buffer.from('TLS is not configured on this server'))
        if (this.secure) return this.optionReply(option, Rep.ERR_INVALID, Buffer.from('TLS is already negotiated'))
        if (data.length !== 0) return this.optionReply(option, Rep.ERR_INVALID, Buffer.from('NBD_OPT_STARTTLS takes no data'))
        return this.startTls(srv.tls.options)
      default:
        // Extended headers, meta contexts without a source, anything unknown.
        this.optionReply(option, Rep.ERR_UNSUP)
    }
  }

  /** LIST_META_CONTEXT / SET_META_CONTEXT: one META_CONTEXT reply per match, then ACK. */
  private metaContextOption(option: number, data: Buffer): void {
    const source = this.srv.metaContexts
    if (!source) return this.optionReply(option, Rep.ERR_UNSUP, Buffer.from('this server offers no meta contexts'))
    if (!this.structured) return this.optionReply(option, Rep.ERR_INVALID, Buffer.from(`${optName(option)} needs NBD_OPT_STRUCTURED_REPLY first`))
    const req = decodeMetaContextRequest(data)
    if (!req) return this.optionReply(option, Rep.ERR_INVALID, Buffer.from(`malformed ${optName(option)} data`))
    if (!this.nameMatches(req.exportName)) return this.optionReply(option, Rep.ERR_UNKNOWN, Buffer.from(`no export named "${req.exportName}"`))
    const list = option === Opt.LIST_META_CONTEXT
    const available = source.contexts()
    const chosen = selectContexts(available, req.queries, list).map((name) => ({id: available.indexOf(name) + 1, name}))
    if (!list) {
      this.metaContexts = chosen
      this.metaExport = req.exportName
    }
    this.s.cork()
    // LIST replies carry id 0: an id means something only after SET.
    for (const c of chosen) this.optionReply(option, Rep.META_CONTEXT, encodeMetaContextReply(list ? 0 : c.id, c.name))
    this.optionReply(option, Rep.ACK)
    this.s.uncork()
  }

  // -------------------------------------------------------------------------------------
  // TLS

  /** ACK the STARTTLS, then (once the ACK has left) run the server handshake on the socket. */
  private startTls(options: TlsOptions): void {
    // The client must wait for our ACK before its ClientHello: anything queued is not TLS.
    if (this.q.length > 0) return this.drop(`${this.q.length} bytes sent after NBD_OPT_STARTTLS before its reply`)
    const raw = this.s
    this.phase = 'starttls'
    // Bytes from here on are TLS records: they must not reach the plaintext parser. Paused,
    // the socket keeps them in its own buffer, where the TLS socket picks them up.
    raw.off('data', this.onData)
    raw.pause()
    raw.write(encodeOptionReply(Opt.STARTTLS, Rep.ACK), (err) => {
      // Wrapping only after the write callback: no plaintext reply is left in the socket's
      // queue to be written after TLS takes it over.
      if (err || this.phase !== 'starttls') return
      try {
        this.handshake(raw, options)
      } catch (error) {
        this.drop(`TLS setup failed: ${describe(error)}`)
      }
    })
  }

  private handshake(raw: Socket, options: TlsOptions): void {
    raw.off('end', this.onEndBound)
    raw.off('drain', this.onDrain)
    // The TLS socket inherits this. Half-open, a client that hangs up mid-handshake would
    // leave it waiting for our end forever (no 'close', no tlsClientError); once secure it
    // goes back to half-open, so in-flight requests are answered after a client's EOF.
    raw.allowHalfOpen = false
    // One tls.Server per handshake: the association from its events to this
    // connection is then certain, and it verifies client certificates (a bare TLSSocket
    // leaves that to the caller). It never listens; it is handed this one socket.
    const ts = createTlsServer({...options, handshakeTimeout: this.srv.handshakeTimeoutMs})
    ts.once('secureConnection', (t: TLSSocket) => {
      if (this.phase !== 'starttls') {
        t.destroy()
        return
      }
      t.allowHalfOpen = true
      this.s = t
      this.secure = true
      this.attach(t)
      this.phase = 'options'
      this.pump()
    })
    ts.once('tlsClientError', (e: Error, t: TLSSocket) => {
      const why = t.authorizationError ? `client certificate refused: ${String(t.authorizationError)}` : e.message.trim()
      t.destroy()
      // The socket's own 'close' may have come first (phase dead): say why all the same.
      if (this.phase === 'dead') this.log(`TLS handshake failed: ${why}`)
      else this.drop(`TLS handshake failed: ${why}`)
    })
    ts.emit('connection', raw)
  }

  private computeTxFlags(): number {
    let f = TxFlag.HAS_FLAGS | TxFlag.SEND_FLUSH | TxFlag.SEND_FUA | TxFlag.SEND_TRIM | TxFlag.SEND_WRITE_ZEROES
    if (this.srv.multiConn) f |= TxFlag.CAN_MULTI_CONN
    if (this.backend.readOnly) f |= TxFlag.READ_ONLY
    return f
  }

  private enterTransmission(): void {
    this.phase = 'transmission'
    this.reachedTransmission = true
    this.size = this.backend.size
    this.txFlags = this.computeTxFlags()
    clearTimeout(this.timer)
    this.timer = undefined
  }

  // -------------------------------------------------------------------------------------
  // Transmission

  /** The NBD errno a request gets before it reaches the backend (0: pass it on). */
  private validate(r: Req): number {
    const {type, flags, offset, length} = r
    const past = offset < 0 || offset + length > this.size
    const readOnly = (this.txFlags & TxFlag.READ_ONLY) !== 0
    switch (type) {
      case Cmd.READ:
        if (flags & ~CmdFlag.FUA) return Errno.EINVAL
        return past || length > BLOCK_MAX ? Errno.EINVAL : 0
      case Cmd.WRITE:
        if (flags & ~CmdFlag.FUA) return Errno.EINVAL
        if (readOnly) return Errno.EPERM
        if (past) return Errno.ENOSPC
        return length > BLOCK_MAX ? Errno.EINVAL : 0
      case Cmd.TRIM:
      case Cmd.WRITE_ZEROES:
        if (flags & ~(type === Cmd.WRITE_ZEROES ? CmdFlag.FUA | CmdFlag.NO_HOLE : CmdFlag.FUA)) return Errno.EINVAL
        if (readOnly) return Errno.EPERM
        return past ? Errno.ENOSPC : 0
      case Cmd.FLUSH:
        return flags & ~CmdFlag.FUA ? Errno.EINVAL : 0
      case Cmd.BLOCK_STATUS:
        if (flags & ~(CmdFlag.FUA | CmdFlag.REQ_ONE) || this.metaContexts.length === 0) return Errno.EINVAL
        return past || length === 0 ? Errno.EINVAL : 0
      default:
        return Errno.EINVAL
    }
  }

  private dispatch(r: Req): void {
    if (r.type !== Cmd.WRITE) r.error = this.validate(r)
    if (r.error !== 0 || (r.length === 0 && r.type !== Cmd.FLUSH)) {
      r.data = undefined
      this.answer(r)
      return
    }
    const {backend} = this
    const fua = (r.flags & CmdFlag.FUA) !== 0
    r.cost = r.type === Cmd.READ || r.type === Cmd.WRITE ? r.length : 0
    this.inflight++
    this.inflightBytes += r.cost
    let p: Promise<Buffer | void>
    try {
      switch (r.type) {
        case Cmd.READ:
          p = backend.read(r.offset, r.length)
          break
        case Cmd.WRITE:
          p = backend.write(r.offset, r.data!, fua)
          break
        case Cmd.WRITE_ZEROES:
          p = backend.writeZeroes(r.offset, r.length, fua, (r.flags & CmdFlag.NO_HOLE) !== 0)
          break
        case Cmd.TRIM:
          p = backend.trim(r.offset, r.length, fua)
          break
        case Cmd.BLOCK_STATUS:
          p = this.blockStatus(r)
          break
        default:
          p = backend.flush()
      }
    } catch (error) {
      p = Promise.reject(error)
    }
    p.then(
      (v) => this.completed(r, v),
      (e: unknown) => this.failed(r, e),
    )
    if (this.inflight >= this.srv.maxInflight || this.inflightBytes >= this.srv.maxInflightBytes) this.pause()
  }

  /** The encoded chunks answering a BLOCK_STATUS: one per selected context, clipped to the request. */
  private async blockStatus(r: Req): Promise<Buffer> {
    const source = this.srv.metaContexts!
    const reqOne = (r.flags & CmdFlag.REQ_ONE) !== 0
    const chunks = await Promise.all(
      this.metaContexts.map(async (c) => ({id: c.id, runs: finishRuns(await source.status(c.name, r.offset, r.length), r.length, reqOne)})),
    )
    for (const c of chunks) if (c.runs.length === 0) throw new Error(`meta context ${this.metaContexts.find((m) => m.id === c.id)?.name}: no status for ${r.offset}+${r.length}`)
    r.raw = true
    return encodeBlockStatusReply(r.cookieHi, r.cookieLo, chunks)
  }

  /** A WRITE's payload (pooled buffer and budget) is free once its backend write settled. */
  private releasePayload(r: Req): void {
    // A WRITE's budget ends here; a READ's once its reply has left (writeReplies).
    if (r.type === Cmd.WRITE) this.release(r)
    if (!r.pooled) return
    this.srv.payloads.put(r.pooled)
    r.pooled = undefined
  }

  private completed(r: Req, v: Buffer | void): void {
    this.releasePayload(r)
    if (r.raw && Buffer.isBuffer(v)) r.data = v
    else if (r.type === Cmd.READ) {
      if (Buffer.isBuffer(v) && v.length === r.length) r.data = v
      else {
        this.log(`${cmdName(r.type)} at ${r.offset}+${r.length}: the backend returned ${Buffer.isBuffer(v) ? `${v.length} bytes` : typeof v}; answering EIO`)
        r.error = Errno.EIO
        r.data = undefined
      }
    } else r.data = undefined
    this.settle(r)
  }

  private failed(r: Req, e: unknown): void {
    this.releasePayload(r)
    r.error = nbdErrnoOf(e)
    r.data = undefined
    r.raw = false
    this.log(`${cmdName(r.type)} at ${r.offset}+${r.length} failed: ${errnoName(r.error)}: ${describe(e)}`)
    this.settle(r)
  }

  private settle(r: Req): void {
    this.inflight--
    this.inflightBytes -= r.cost
    this.answer(r)
    if (this.inflight === 0 && this.idleWaiter) {
      const w = this.idleWaiter
      this.idleWaiter = undefined
      w()
    }
    this.maybeResume()
  }

  /** Queue a reply; every reply queued in this turn of the event loop goes out in one write. */
  private answer(r: Req): void {
    if (this.phase === 'dead') {
      this.release(r)
      return
    }
    this.replies.push(r)
    if (!this.flushScheduled) {
      this.flushScheduled = true
      setImmediate(this.flushBound)
    }
  }

  private flushReplies(): void {
    this.flushScheduled = false
    try {
      this.writeReplies()
    } catch (error) {
      // Runs from setImmediate: a throw here would take the whole process down.
      this.drop(`internal error (a bug): ${describe(error, true)}`)
    }
  }

  private writeReplies(): void {
    const list = this.replies
    if (list.length === 0) return this.maybeFinishEnding()
    this.replies = []
    if (this.phase === 'dead' || this.s.destroyed) {
      for (const r of list) this.release(r)
      return
    }
    // READ data holds its bytes until the socket has handed the batch to the kernel.
    const owed = list.some((r) => r.held > 0)
    if (owed) this.unsent.add(list)
    const written = (): void => {
      if (!this.unsent.delete(list)) return
      for (const r of list) this.release(r)
      if (this.phase !== 'dead') this.watchReplies()
    }
    let inline = 0
    let large = false
    for (const r of list) {
      inline += this.headBytes(r)
      const d = r.data
      if (d) {
        if (d.length <= INLINE_DATA_MAX) inline += d.length
        else large = true
      }
    }
    const buf = Buffer.allocUnsafe(inline)
    let pos = 0
    if (!large) {
      for (const r of list) {
        pos += this.writeHead(buf, pos, r)
        if (r.data) pos += r.data.copy(buf, pos)
        r.data = undefined
      }
      if (owed) this.s.write(buf, written)
      else this.s.write(buf)
    } else {
      // Large read data goes by reference: header bytes so far, the data, and on (one writev).
      this.s.cork()
      let start = 0
      const parts: Buffer[] = []
      for (const r of list) {
        pos += this.writeHead(buf, pos, r)
        const d = r.data
        r.data = undefined
        if (!d) continue
        if (d.length <= INLINE_DATA_MAX) pos += d.copy(buf, pos)
        else {
          parts.push(buf.subarray(start, pos), d)
          start = pos
        }
      }
      if (pos > start) parts.push(buf.subarray(start, pos))
      // The last write's callback comes once every earlier write is out too.
      for (const [i, part] of parts.entries()) {
        if (owed && i === parts.length - 1) this.s.write(part, written)
        else this.s.write(part)
      }
      this.s.uncork()
    }
    this.watchReplies()
    if (this.s.writableLength > this.srv.maxBacklogBytes) this.pause()
    this.maybeFinishEnding()
  }

  /**
   * Bytes of a reply before its data: a simple reply header; with structured replies, READ's
   * OFFSET_DATA head (a NONE chunk for a zero-length READ), or an ERROR chunk for a failed
   * READ or BLOCK_STATUS; nothing for BLOCK_STATUS chunks already encoded.
   */
  private headBytes(r: Req): number {
    if (r.raw) return 0
    if (!this.structured || (r.type !== Cmd.READ && r.type !== Cmd.BLOCK_STATUS)) return SIMPLE_REPLY_SIZE
    if (r.error !== 0) return ERROR_CHUNK_SIZE
    return r.data ? OFFSET_DATA_HEAD : STRUCTURED_REPLY_SIZE
  }

  /** Write what headBytes(r) counted at `pos`; returns its size. */
  private writeHead(buf: Buffer, pos: number, r: Req): number {
    const n = this.headBytes(r)
    if (n === SIMPLE_REPLY_SIZE) writeSimpleReplyHeader(buf, pos, r.error, r.cookieHi, r.cookieLo)
    else if (n === ERROR_CHUNK_SIZE) writeErrorChunk(buf, pos, r.error, r.cookieHi, r.cookieLo)
    else if (n === OFFSET_DATA_HEAD) writeOffsetDataHead(buf, pos, r.cookieHi, r.cookieLo, r.offset, r.data!.length)
    else if (n === STRUCTURED_REPLY_SIZE) writeStructuredHeader(buf, pos, 1, ReplyType.NONE, r.cookieHi, r.cookieLo, 0)
    return n
  }

  private pause(): void {
    if (this.paused) return
    this.paused = true
    this.s.pause()
  }

  private maybeResume(): void {
    // destroyed: closed by the client, its 'close' not yet seen; bytes freed elsewhere must not start its reads.
    if (!this.paused || this.phase === 'dead' || this.budgetWait || this.s.destroyed) return
    const {srv} = this
    if (this.inflight >= srv.maxInflight || this.inflightBytes >= srv.maxInflightBytes || this.s.writableLength > srv.maxBacklogBytes) return
    this.paused = false
    this.s.resume()
    this.pump()
  }

  // -------------------------------------------------------------------------------------
  // Ending

  /** Stop taking requests; once those in flight are answered, close (soft disconnect). */
  private beginEnding(): void {
    if (this.phase === 'ending' || this.phase === 'dead') return
    this.phase = 'ending'
    if (this.pendingWrite) this.release(this.pendingWrite)
    if (this.awaiting) this.release(this.awaiting)
    clearTimeout(this.payloadTimer)
    this.pendingWrite = undefined
    this.awaiting = undefined
    this.q.clear()
    this.maybeFinishEnding()
  }

  private maybeFinishEnding(): void {
    if (this.phase !== 'ending' || this.inflight > 0 || this.replies.length > 0 || this.flushScheduled) return
    this.phase = 'dead'
    const t = setTimeout(() => this.s.destroy(), END_GRACE_MS)
    t.unref()
    this.s.end(() => {
      clearTimeout(t)
      this.s.destroy()
    })
  }

  /** The client half-closed: finish what is in flight, then close. */
  private onEnd(): void {
    if (this.phase === 'transmission') this.beginEnding()
    else if (this.phase !== 'ending' && this.phase !== 'dead') {
      // A probe, or a client giving up during the handshake: nothing to finish.
      if (this.raw !== this.s) this.raw.destroy()
      this.phase = 'dead'
      this.s.destroy()
    }
  }

  /** The client has negotiated an export (it may have read from it, and may cache it). */
  get attached(): boolean {
    return this.reachedTransmission && this.phase !== 'dead'
  }

  /** Close at once, whatever is in flight (its replies are not sent). */
  kill(why: string): void {
    this.drop(why)
  }

  /** Server shutdown: handshakes are cut; transmission answers what is in flight first. */
  shutdown(): void {
    if (this.phase === 'transmission') this.beginEnding()
    else if (this.phase !== 'ending' && this.phase !== 'dead') this.drop('server shutting down')
  }

  private onClose(): void {
    if (this.closeHandled) return
    this.closeHandled = true
    this.phase = 'dead'
    clearTimeout(this.timer)
    clearTimeout(this.payloadTimer)
    clearTimeout(this.replyTimer)
    this.q.clear()
    // Bytes held by what will never be sent or run; requests in flight give theirs back as they settle.
    for (const r of [this.pendingWrite, this.awaiting, ...this.replies, ...[...this.unsent].flat()]) if (r) this.release(r)
    this.unsent.clear()
    this.pendingWrite = undefined
    this.awaiting = undefined
    this.replies = []
    void this.finish()
  }

  private async finish(): Promise<void> {
    if (this.inflight > 0) await new Promise<void>((r) => (this.idleWaiter = r))
    if (this.reachedTransmission) {
      try {
        await (this.backend.clientClosed ? this.backend.clientClosed() : this.backend.flush())
      } catch (error) {
        this.log(`flush after disconnect failed: ${describe(error)}`)
      }
    }
    this.srv.forget(this)
    this.resolveFinished()
  }
}

interface NbdServerEvents {
  /** A client connected; the argument is the number of connections now. */
  connect: [connections: number]
  /** A connection closed and its disconnect flush finished. */
  disconnect: [connections: number]
}

/**
 * Serves one ExportBackend over NBD (fixed newstyle, simple replies) on any number of unix
 * and TCP listeners. Malformed or hostile input drops that connection only; backend
 * errors become NBD errors and are logged; the server keeps serving.
 */
export class NbdServer extends EventEmitter<NbdServerEvents> {
  readonly exportName: string
  readonly description?: string
  readonly log?: (message: string) => void
  readonly multiConn: boolean
  readonly maxInflight: number
  readonly maxInflightBytes: number
  readonly maxBacklogBytes: number
  readonly handshakeTimeoutMs: number
  readonly maxConnections: number
  readonly payloadTimeoutMs: number
  readonly tls?: {options: TlsOptions; required: boolean}
  /** READ/WRITE payload bytes held across connections (maxBufferBytes). */
  readonly budget: PayloadBudget
  readonly metaContexts?: MetaContextSource
  /** WRITE payload buffers, reused across requests and connections. */
  readonly payloads = new PayloadPool()
  readonly handBackIdleMs: number
  /** Times memory was handed back after a burst (status reports it). */
  handBacks = 0
  private handBackTimer?: NodeJS.Timeout
  private afterGc: Array<[number, Grant]> = []
  private readonly servers: Server[] = []
  private readonly conns = new Set<Connection>()
  private nextId = 0
  private closing: Promise<void> | undefined

  constructor(
    private readonly backend: ExportBackend,
    opts: NbdServerOptions = {},
  ) {
    super()
    this.exportName = opts.exportName ?? ''
    this.description = opts.description
    this.log = opts.log
    this.multiConn = opts.multiConn ?? true
    this.maxInflight = Math.max(1, opts.maxInflight ?? 64)
    this.maxInflightBytes = Math.max(BLOCK_MAX, opts.maxInflightBytes ?? 128 * 1024 * 1024)
    this.maxBacklogBytes = opts.maxBacklogBytes ?? 64 * 1024 * 1024
    this.handshakeTimeoutMs = opts.handshakeTimeoutMs ?? 60_000
    this.maxConnections = Math.max(1, opts.maxConnections ?? 64)
    this.payloadTimeoutMs = opts.payloadTimeoutMs ?? 60_000
    const limit = Math.max(1, opts.maxBufferBytes ?? 256 * 1024 * 1024)
    // The reserve keeps small requests of other clients going while the budget is full.
    const reserve = Math.min(32 * 1024 * 1024, Math.max(4 * 1024 * 1024, Math.floor(limit / 8)))
    this.budget = new PayloadBudget(limit, reserve, reserve / 8)
    this.handBackIdleMs = opts.handBackIdleMs ?? 2000
    this.budget.onDrained = () => this.armHandBack()
    this.tls = opts.tls
    this.metaContexts = opts.metaContexts
  }

  /**
   * After a burst, serve would keep its peak RSS for good (issue 13 item 1): once the budget
   * has drained and stayed empty for handBackIdleMs, drop the pool's buffers and hand the
   * memory back. Every drain pushes the time back, so steady I/O never pays for it.
   */
  /**
   * Bytes of a dead connection's large payload, given back after a GC at the next turn: they
   * are garbage but resident until a GC, and waiting connections would take them again at
   * once, garbage and replacement resident together (measured: 12 READ attackers dropped
   * took RSS from 321 to 458 MiB).
   */
  giveAfterGc(n: number, g: Grant): void {
    this.afterGc.push([n, g])
    if (this.afterGc.length > 1) return
    setImmediate(() => {
      collectGarbage()
      const gives = this.afterGc
      this.afterGc = []
      for (const [k, grant] of gives) this.budget.give(k, grant)
    })
  }

  private armHandBack(): void {
    if (this.budget.burst <= this.payloads.maxKeptBytes) return
    if (this.handBackTimer) {
      this.handBackTimer.refresh()
      return
    }
    this.handBackTimer = setTimeout(() => {
      this.handBackTimer = undefined
      const {budget} = this
      if (budget.used + budget.reserveUsed > 0) return // busy again: its next drain re-arms
      budget.burst = 0
      this.payloads.clear()
      void handBackMemory()
        .catch(() => undefined) // nothing was handed back; serving goes on
        .finally(() => this.handBacks++)
    }, this.handBackIdleMs)
    this.handBackTimer.unref()
  }

  /** Open connections, in any phase. */
  get connections(): number {
    return this.conns.size
  }

  /** Clients past the handshake (they may have read the export and cache it): who, since when. */
  attachedClients(): Array<{id: number; peer: string; since: Date}> {
    return [...this.conns].filter((c) => c.attached).map((c) => ({id: c.id, peer: c.peer, since: c.since}))
  }

  /**
   * Close the connections of every client past the handshake: requests in flight are
   * answered first and each disconnect flush runs (as at shutdown). Waits. New clients are
   * still accepted.
   */
  async disconnectClients(): Promise<void> {
    const conns = [...this.conns].filter((c) => c.attached)
    for (const c of conns) c.shutdown()
    await Promise.all(conns.map((c) => c.finished))
  }

  /** Close every attached client's connection now, without waiting for its requests (they may wait on a lock the caller holds). */
  killClients(why: string): void {
    for (const c of this.conns) if (c.attached) c.kill(why)
  }

  /** @internal A connection has closed and flushed. */
  forget(c: Connection): void {
    if (this.conns.delete(c)) this.emit('disconnect', this.conns.size)
    // Its socket chunks and replies are garbage only now: a hand-back must come after this.
    if (this.budget.used + this.budget.reserveUsed === 0) this.armHandBack()
  }

  private async listenOn(listen: (server: Server) => Promise<void>, unixPath?: string): Promise<Server> {
    if (this.closing) throw new Error('NbdServer: listen after close')
    const server = createServer({allowHalfOpen: true}, (s) => {
      if (this.closing) {
        s.destroy()
        return
      }
      if (this.conns.size >= this.maxConnections) {
        const peer = s.remoteAddress ? `${s.remoteAddress}:${s.remotePort}` : 'a unix socket client'
        try {
          this.log?.(`nbd: refused a connection from ${peer}: ${this.conns.size} connections are open, the limit (--max-connections) is ${this.maxConnections}`)
        } catch {
          // nowhere left to report it
        }
        s.destroy()
        return
      }
      this.conns.add(new Connection(s, this, this.backend, ++this.nextId, unixPath))
      this.emit('connect', this.conns.size)
    })
    await listen(server)
    // Accept errors (EMFILE, …) must not crash the process.
    server.on('error', (e) => {
      try {
        this.log?.(`nbd: listener error: ${e.message}`)
      } catch {
        // nowhere left to report it
      }
    })
    this.servers.push(server)
    return server
  }

  /**
   * Listen on a unix socket, mode 0600 from the moment it exists. A stale socket file (nobody accepting) is replaced;
   * a live one, or a path that is not a socket, is refused. Resolves once listening.
   */
  async listenUnix(path: string): Promise<void> {
    let isSocket: boolean | undefined
    try {
      isSocket = (await lstat(path)).isSocket()
    } catch (error) {
      if (errnoOf(error) !== 'ENOENT') throw error
    }
    if (isSocket === false) throw new RefusedError(`${path} exists and is not a socket`, 'remove it, or choose another socket path')
    if (isSocket) {
      if (await socketAccepts(path)) throw new RefusedError(`another server is listening on ${path}`, 'stop that server, or choose another socket path')
      await rm(path, {force: true})
    }
    // Private from the first moment (mode 0600 at bind): a chmod afterwards leaves a window.
    await this.listenOn((srv) => listenPrivate(srv, path), path)
  }

  /** Listen on TCP (only on an explicit address, DESIGN §5). Resolves to the bound port (port 0 picks one). */
  async listenTcp(host: string, port: number): Promise<number> {
    const server = await this.listenOn(
      (srv) =>
        new Promise<void>((resolve, reject) => {
          srv.once('error', reject)
          srv.listen(port, host, () => {
            srv.off('error', reject)
            resolve()
          })
        }),
    )
    const addr = server.address()
    return typeof addr === 'object' && addr ? addr.port : port
  }

  /**
   * Stop accepting, cut connections still in the handshake, let every request in flight
   * finish and its reply go out, run the disconnect flush of each connection, close them.
   * Waits for all of it. Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      clearTimeout(this.handBackTimer)
      const listeners = this.servers.map((s) => new Promise<void>((r) => s.close(() => r())))
      const conns = [...this.conns]
      for (const c of conns) c.shutdown()
      await Promise.all(conns.map((c) => c.finished))
      await Promise.all(listeners)
    })()
    return this.closing
  }
}

/** An error's message (its stack, for a bug), never throwing whatever was thrown. */
function describe(e: unknown, stack = false): string {
  try {
    if (e instanceof Error) return (stack && e.stack) || e.message || e.name
    return String(e)
  } catch {
    return 'an unprintable error'
  }
}

/** True when something accepts connections on the unix socket at `path`. */
function socketAccepts(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = connect(path)
    const done = (live: boolean): void => {
      c.destroy()
      resolve(live)
    }
    c.once('connect', () => done(true))
    // ECONNREFUSED (stale) or ENOENT: nobody there. Anything else (EACCES, EAGAIN: a full
    // backlog) means we cannot tell: treat it as live rather than delete someone's socket.
    c.once('error', (e) => done(!['ECONNREFUSED', 'ENOENT'].includes(errnoOf(e) ?? '')))
  })
}
