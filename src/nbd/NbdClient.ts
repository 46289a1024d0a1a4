/**
 * An NBD client (the client role of protocol.ts): one connection to one export, for
 * NbdVolume (a clone on another system) and for tests.
 *
 * Notes on the design:
 * - Handshake: fixed newstyle, NO_ZEROES when offered; NBD_OPT_STARTTLS first when TLS is
 *   wanted (then the rest of the handshake runs inside TLS); NBD_OPT_GO asking for
 *   NBD_INFO_BLOCK_SIZE, which also tells the server we honour its block sizes; plain
 *   NBD_OPT_EXPORT_NAME only when the server answers GO with ERR_UNSUP. Before GO,
 *   NBD_OPT_STRUCTURED_REPLY and, when acknowledged, NBD_OPT_SET_META_CONTEXT for
 *   `base:allocation`: extents() then asks NBD_CMD_BLOCK_STATUS, so a copy from a remote
 *   skips its holes. A server that refuses either is used as before (simple replies, every
 *   byte data).
 * - Structured replies: a READ may come as several OFFSET_DATA / OFFSET_HOLE chunks in any
 *   order (holes are filled with zeros here); it succeeds only when its chunks covered every
 *   byte and no ERROR chunk came. A chunk for an unknown cookie, outside its request, or of a
 *   type that does not belong to its command is a protocol error (the connection drops).
 *   A HOLE without ZERO is data: only NBD_STATE_ZERO promises zeros.
 * - Transmission: many requests in flight (at most `maxInflight`, the rest queue here),
 *   each found by its cookie, completing in any order. READ data is copied from the socket
 *   chunks straight into the caller's buffer.
 * - Block sizes: READ/WRITE payloads are split at the server's maximum (capped at 32 MiB);
 *   a request not aligned to the server's minimum is widened (reads) or done as
 *   read-modify-write (writes, one at a time, so two of them cannot lose each other's bytes
 *   inside one block). clonectl's extents are ≥ 4 KiB and aligned, so this is rare.
 * - Failure: a request unanswered after `requestTimeoutMs`, a protocol violation, or the
 *   socket closing or failing tears the connection down and rejects every pending and
 *   queued request with a RemoteError; the client never reconnects by itself and never
 *   hangs. An NBD error reply fails only its own request (RemoteError, `errno` = EIO…).
 * - The connect timeout covers TCP connect, TLS and the handshake.
 */
import {readFile} from 'node:fs/promises'
import {connect as netConnect, isIP, type Socket} from 'node:net'
import {join} from 'node:path'
import {connect as tlsConnect, type ConnectionOptions, type TLSSocket} from 'node:tls'
import {InterruptedError, RemoteError, UsageError, VolumeIoError, errnoOf, type RemoteErrorReason} from '../errors/errors.js'
import {ByteQueue} from './ByteQueue.js'
import {describeTransport, parseNbdUri, type NbdUri} from './nbdUri.js'
import {pskCipherList} from './tls.js'
import {
  ClientFlag,
  Cmd,
  CmdFlag,
  Errno,
  EXPORT_NAME_REPLY_SIZE,
  EXPORT_NAME_ZERO_PAD,
  GREETING_SIZE,
  HandshakeFlag,
  IHAVEOPT,
  Info,
  NBDMAGIC,
  OPTION_REPLY_HEADER_SIZE,
  Opt,
  REQUEST_MAGIC,
  REQUEST_SIZE,
  Rep,
  SIMPLE_REPLY_MAGIC,
  SIMPLE_REPLY_SIZE,
  STRUCTURED_REPLY_MAGIC,
  STRUCTURED_REPLY_SIZE,
  ReplyFlag,
  ReplyType,
  StateFlag,
  type StatusRun,
  decodeMetaContextReply,
  encodeMetaContextRequest,
  TxFlag,
  cmdName,
  decodeExportNameReply,
  decodeInfo,
  decodeOptionReplyHeader,
  encodeClientFlags,
  encodeGoData,
  encodeOption,
  errnoName,
  isRepError,
  optName,
} from './protocol.js'

export interface NbdClientOptions {
  /** TCP connect + TLS + handshake must finish within this (default 10 000 ms). */
  connectTimeoutMs?: number
  /** A request unanswered this long fails and tears the connection down (default 60 000 ms). */
  requestTimeoutMs?: number
  /**
   * TLS settings for node:tls (ca, cert, key, pskCallback, servername, rejectUnauthorized…).
   * Given: NBD_OPT_STARTTLS, then TLS. Not given: built from the URI's tls-* parameters
   * when the URI is nbds://; an nbds:// URI with neither is refused.
   */
  tls?: ConnectionOptions
  /** Aborts connecting (the handshake); an established connection is not affected. */
  signal?: AbortSignal
  /** Requests on the wire at once; more wait here (default 64). */
  maxInflight?: number
  /**
   * READ/WRITE bytes on the wire at once (default 64 MiB; one larger request may go alone).
   * A request's timeout starts when it is sent, so this keeps a slow link from timing out
   * requests that are merely waiting behind others' data.
   */
  maxInflightBytes?: number
}

export interface BlockSizes {
  min: number
  preferred: number
  /** The largest READ/WRITE payload this client sends: the server's maximum, at most 32 MiB. */
  max: number
}

/** Largest READ/WRITE payload ever sent, whatever the server allows (proto.md's advice). */
export const MAX_PAYLOAD = 32 * 1024 * 1024
/** WRITE_ZEROES and TRIM carry no payload: they go in chunks this large (as qemu does, below 2^31). */
const ZERO_TRIM_CHUNK = 1024 * 1024 * 1024
/** The zero buffer for servers without WRITE_ZEROES: written from, never into. */
const ZERO_BUF_SIZE = 4 * 1024 * 1024
let zeroBuf: Buffer | undefined
const zeros = (): Buffer => (zeroBuf ??= Buffer.alloc(ZERO_BUF_SIZE))
const TWO32 = 0x1_0000_0000
/** After DISC, how long close() waits for the server to close before destroying the socket. */
const CLOSE_GRACE_MS = 2000

/** What to tell the user for an NBD error reply. */
const ERRNO_TEXT: Record<string, {what: string; fix: string}> = {
  EIO: {what: 'input/output error', fix: "check the NBD server's storage and its log"},
  ENOSPC: {what: 'no space left', fix: "free space on the NBD server's storage, then run the command again"},
  EPERM: {what: 'operation not permitted', fix: 'check that the export is writable (not served read-only)'},
  EINVAL: {what: 'invalid argument', fix: "check the export's size and block sizes (nbdinfo URI); this may be a bug"},
  ENOMEM: {what: 'out of memory on the server', fix: 'retry later, or give the NBD server more memory'},
  EOVERFLOW: {what: 'request too large', fix: 'this is a bug in clonectl or the server; report it'},
  ENOTSUP: {what: 'operation not supported', fix: 'use a server that supports it'},
  ESHUTDOWN: {what: 'server is shutting down', fix: 'wait for the NBD server to come back, then run the command again'},
}

interface Pending {
  cookie: number
  type: number
  flags: number
  offset: number
  length: number
  /** READ: where the data goes (exactly `length` bytes). */
  dest?: Buffer
  /** WRITE: the payload. */
  payload?: Uint8Array
  resolve: () => void
  reject: (e: Error) => void
  timer?: NodeJS.Timeout
  /** Structured replies: READ bytes covered by chunks so far. */
  got?: number
  /** Structured replies: the first ERROR chunk's errno. */
  error?: number
  /** BLOCK_STATUS: the base:allocation descriptors. */
  runs?: StatusRun[]
}

/** A structured chunk being received: its header fields, and its payload so far. */
interface ChunkState {
  p: Pending
  flags: number
  type: number
  length: number
  /** OFFSET_DATA: bytes of data left to copy into p.dest, and where the next one goes. */
  dataLeft: number
  destAt: number
  /** The payload (all of it, or OFFSET_DATA's 8-byte offset) while it is gathered. */
  head: Buffer
  headFill: number
}

/** The largest structured chunk payload kept in memory besides READ data (block status). */
const MAX_CHUNK = 64 * 1024 * 1024

export interface NbdExportInfo {
  size: number
  /** Transmission flags (TxFlag). */
  flags: number
  blockSizes: BlockSizes
  /** Whether the server sent NBD_INFO_BLOCK_SIZE (false: defaults 1 / 4096 / 32 MiB). */
  blockSizesFromServer: boolean
  description?: string
  /** 'go' normally; 'export-name' for servers without NBD_OPT_GO. */
  negotiatedWith: 'go' | 'export-name'
  tls: boolean
  /** NBD_OPT_STRUCTURED_REPLY was acknowledged. */
  structured?: boolean
  /** The id of the base:allocation meta context, when the server selected it. */
  allocationContext?: number
}

/**
 * Read certificates or a PSK named by the URI's tls-* parameters into node:tls options.
 * Undefined when the URI names none. Waits (reads files).
 */
export async function tlsOptionsFromUri(u: NbdUri): Promise<ConnectionOptions | undefined> {
  if (u.tlsCertificates === undefined && u.tlsPskFile === undefined) return undefined
  const opts: ConnectionOptions = {}
  if (u.tlsVerifyPeer === false) opts.rejectUnauthorized = false
  if (u.tlsHostname !== undefined) opts.servername = u.tlsHostname
  if (u.tlsCertificates !== undefined) {
    const dir = u.tlsCertificates
    const file = async (name: string, required: boolean): Promise<Buffer | undefined> => {
      try {
        return await readFile(join(dir, name))
      } catch (error) {
        if (!required && errnoOf(error) === 'ENOENT') return undefined
        throw new UsageError(`${u.uri}: cannot read ${join(dir, name)} (${errnoOf(error) ?? String(error)})`, 'tls-certificates=DIR must hold ca-cert.pem, and client-cert.pem with client-key.pem when the server asks for a client certificate')
      }
    }
    // A server that verifies clients needs both; one without the other is a mistake to report.
    const [ca, cert, key] = await Promise.all([file('ca-cert.pem', u.tlsVerifyPeer !== false), file('client-cert.pem', false), file('client-key.pem', false)])
    if ((cert === undefined) !== (key === undefined)) throw new UsageError(`${u.uri}: ${dir} has only one of client-cert.pem and client-key.pem`, 'put both there, or neither')
    if (ca) opts.ca = ca
    if (cert && key) Object.assign(opts, {cert, key})
  } else if (u.tlsPskFile !== undefined) {
    let text: string
    try {
      text = await readFile(u.tlsPskFile, 'utf8')
    } catch (error) {
      throw new UsageError(`${u.uri}: cannot read the PSK file ${u.tlsPskFile} (${errnoOf(error) ?? String(error)})`, 'check tls-psk-file=PATH (a psktool file of username:hexkey lines)')
    }
    const entries = text
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l !== '' && !l.startsWith('#'))
      .map((l) => {
        const c = l.indexOf(':')
        return {identity: l.slice(0, c), key: l.slice(c + 1)}
      })
    const want = u.tlsUsername
    const entry = want === undefined ? entries[0] : entries.find((e) => e.identity === want)
    if (!entry || !/^([0-9a-fA-F]{2})+$/.test(entry.key))
      throw new UsageError(`${u.uri}: ${u.tlsPskFile} has no ${want === undefined ? '' : `"${want}" `}entry of the form username:hexkey`, 'make it with `psktool -u USER -p FILE`')
    const psk = Buffer.from(entry.key, 'hex')
    const identity = entry.identity
    opts.pskCallback = () => ({psk, identity})
    // Node's default cipher list has no PSK suites; pskCipherList says which TLS 1.3 suite to avoid and why.
    opts.ciphers = pskCipherList(true)
    opts.checkServerIdentity = () => undefined
  }
  return opts
}

/**
 * One NBD connection to one export. connect() resolves once the export is ready for I/O.
 * All I/O methods may run concurrently; close() waits for them.
 */
export class NbdClient {
  readonly uri: string
  readonly target: NbdUri
  readonly info: NbdExportInfo
  private readonly pending = new Map<number, Pending>()
  private readonly queue: Pending[] = []
  private nextCookie = 1
  private readonly maxInflight: number
  private readonly maxInflightBytes: number
  private inflightBytes = 0
  private readonly requestTimeoutMs: number
  private failure?: RemoteError
  private closing?: Promise<void>
  private drained?: () => void
  private rmwChain: Promise<unknown> = Promise.resolve()
  /** Public calls running; close() waits for none. */
  private active = 0
  // Reply parser state: a header being filled (simple, or structured), then READ data for
  // `cur` (simple reply) or the payload of a structured chunk.
  private readonly hdr = Buffer.alloc(STRUCTURED_REPLY_SIZE)
  private chunk?: ChunkState
  private hdrFill = 0
  private cur?: Pending
  private curDone = 0

  private constructor(
    private readonly socket: Socket | TLSSocket,
    target: NbdUri,
    info: NbdExportInfo,
    opts: NbdClientOptions,
  ) {
    this.target = target
    this.uri = target.uri
    this.info = info
    this.maxInflight = Math.max(1, opts.maxInflight ?? 64)
    this.maxInflightBytes = Math.max(1, opts.maxInflightBytes ?? 64 * 1024 * 1024)
    this.requestTimeoutMs = opts.requestTimeoutMs ?? 60_000
    socket.on('data', (b: Buffer) => this.onData(b))
    socket.on('error', (e) => this.fail(this.lostError(e)))
    socket.on('close', () => this.fail(this.lostError()))
    socket.setNoDelay?.(true)
  }

  /**
   * Connect to an NBD URI (or a parsed one) and negotiate the export. Rejects with a
   * RemoteError (unreachable, handshake, TLS, timeout), a UsageError (a malformed URI, nbds://
   * without credentials) or the abort reason. Waits.
   */
  static async connect(target: string | NbdUri, opts: NbdClientOptions = {}): Promise<NbdClient> {
    const t = typeof target === 'string' ? parseNbdUri(target) : target
    let tlsOpts = opts.tls
    if (tlsOpts === undefined && t.tls) {
      tlsOpts = await tlsOptionsFromUri(t)
      if (tlsOpts === undefined)
        throw new UsageError(`${t.uri} asks for TLS but names no credentials`, `add ?tls-certificates=DIR (with ca-cert.pem, client-cert.pem, client-key.pem) or ?tls-psk-file=FILE to the URI`)
    }
    const h = new Handshake(t, opts, tlsOpts)
    const {socket, info} = await h.run()
    return new NbdClient(socket, t, info, opts)
  }

  get size(): number {
    return this.info.size
  }
  get readOnly(): boolean {
    return (this.info.flags & TxFlag.READ_ONLY) !== 0
  }
  get canFlush(): boolean {
    return (this.info.flags & TxFlag.SEND_FLUSH) !== 0
  }
  get canFua(): boolean {
    return (this.info.flags & TxFlag.SEND_FUA) !== 0
  }
  get canTrim(): boolean {
    return (this.info.flags & TxFlag.SEND_TRIM) !== 0
  }
  get canWriteZeroes(): boolean {
    return (this.info.flags & TxFlag.SEND_WRITE_ZEROES) !== 0
  }
  get canMultiConn(): boolean {
    return (this.info.flags & TxFlag.CAN_MULTI_CONN) !== 0
  }
  /** Requests sent and not yet answered, plus those queued here. */
  get inflight(): number {
    return this.pending.size + this.queue.length
  }
  /** The error that ended the connection, if it has ended. */
  get failed(): RemoteError | undefined {
    return this.failure
  }

  // -------------------------------------------------------------------------------------
  // I/O

  /** Read exactly `length` bytes at `offset` (into `into` when it is large enough). Waits. */
  read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    return this.guard(() => this.readImpl(offset, length, into))
  }

  /** Write all of `data` at `offset`; with `fua`, durable when it resolves. Waits. */
  write(offset: number, data: Uint8Array, opts: {fua?: boolean} = {}): Promise<void> {
    return this.guard(() => this.writeImpl(offset, data, opts.fua ?? false))
  }

  /**
   * Make [offset, offset+length) read as zeros: NBD_CMD_WRITE_ZEROES when the server has it
   * (with NO_HOLE when `noHole`: blocks kept allocated; without, it may punch holes), else
   * WRITEs from a shared zero buffer. Waits.
   */
  writeZeroes(offset: number, length: number, opts: {fua?: boolean; noHole?: boolean} = {}): Promise<void> {
    return this.guard(() => this.writeZeroesImpl(offset, length, opts.fua ?? false, opts.noHole ?? false))
  }

  /**
   * The data/zero/hole runs of [offset, offset+length) from the server's base:allocation
   * (NBD_CMD_BLOCK_STATUS, asked again from where a short answer ended); one data run when
   * the server offers no block status. ZERO makes a run `zero` (`hole` with HOLE too); HOLE
   * alone is data: nothing promises it reads as zeros. Waits.
   */
  extents(offset: number, length: number): Promise<Array<{offset: number; length: number; kind: 'data' | 'zero' | 'hole'}>> {
    return this.guard(() => this.extentsImpl(offset, length))
  }

  private async extentsImpl(offset: number, length: number): Promise<Array<{offset: number; length: number; kind: 'data' | 'zero' | 'hole'}>> {
    this.checkRange('read', offset, length)
    if (length === 0) return []
    if (this.info.allocationContext === undefined) return [{offset, length, kind: 'data'}]
    const out: Array<{offset: number; length: number; kind: 'data' | 'zero' | 'hole'}> = []
    const end = offset + length
    const min = this.info.blockSizes.min
    let pos = offset
    while (pos < end) {
      // Block sizes apply to block status too: ask whole blocks, clip the answer.
      const a0 = alignDown(pos, min)
      const a1 = Math.min(alignUp(end, min), this.size, a0 + alignDown(0x8000_0000, min))
      const p = await this.submitStatus(a0, a1 - a0)
      let at = a0
      for (const r of p) {
        const s = Math.max(at, pos)
        const e = Math.min(at + r.length, end)
        at += r.length
        if (e <= s) continue
        const kind = r.flags & StateFlag.ZERO ? (r.flags & StateFlag.HOLE ? 'hole' : 'zero') : 'data'
        const last = out.at(-1)
        if (last && last.kind === kind && last.offset + last.length === s) last.length += e - s
        else out.push({offset: s, length: e - s, kind})
        if (at >= end) break
      }
      if (at <= pos) throw new RemoteError(`${this.uri}: protocol error: block status at offset ${a0} described no bytes past ${pos}`, 'protocol', 'this is a bug in the NBD server; report it')
      pos = Math.min(at, end)
    }
    return out
  }

  /** One BLOCK_STATUS; resolves to its base:allocation descriptors (at least one). */
  private async submitStatus(offset: number, length: number): Promise<StatusRun[]> {
    const holder: {p?: Pending} = {}
    await this.submit(Cmd.BLOCK_STATUS, 0, offset, length, {}, holder)
    const runs = holder.p?.runs
    if (!runs || runs.length === 0) throw new RemoteError(`${this.uri}: protocol error: block status at offset ${offset} came without base:allocation descriptors`, 'protocol', 'this is a bug in the NBD server; report it')
    return runs
  }

  /** NBD_CMD_TRIM when advertised (advisory: the range may then read as anything), else nothing. Waits. */
  trim(offset: number, length: number): Promise<void> {
    return this.guard(() => this.trimImpl(offset, length))
  }

  /**
   * NBD_CMD_FLUSH: every write completed before the call is durable when it resolves. A
   * no-op when the server does not advertise FLUSH (it then has no volatile cache). Waits.
   */
  flush(): Promise<void> {
    return this.guard(() => this.flushImpl())
  }

  /** Count a public call, so close() can wait for it; refuse calls once closed or failed. */
  private async guard<T>(fn: () => Promise<T>): Promise<T> {
    if (this.failure) throw this.failure
    if (this.closing) throw new RemoteError(`${this.uri}: the connection is closing`, 'closed', 'this is a bug: the volume was used after close()')
    this.active++
    try {
      return await fn()
    } finally {
      this.active--
      if (this.active === 0 && this.drained) {
        const d = this.drained
        this.drained = undefined
        d()
      }
    }
  }

  private async readImpl(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    this.checkRange('read', offset, length)
    const out = into && into.length >= length ? into.subarray(0, length) : Buffer.allocUnsafe(length)
    if (length === 0) return out
    const min = this.info.blockSizes.min
    const a0 = alignDown(offset, min)
    const a1 = Math.min(alignUp(offset + length, min), this.size)
    if (a0 === offset && a1 === offset + length) {
      await this.readAligned(offset, out)
      return out
    }
    // Unaligned to the server's minimum block: read the enclosing blocks, copy out the middle.
    const tmp = Buffer.allocUnsafe(a1 - a0)
    await this.readAligned(a0, tmp)
    tmp.copy(out, 0, offset - a0, offset - a0 + length)
    return out
  }

  private async writeImpl(offset: number, data: Uint8Array, fua: boolean): Promise<void> {
    this.checkWritable('write')
    this.checkRange('write', offset, data.byteLength)
    if (data.byteLength === 0) return
    const min = this.info.blockSizes.min
    if (offset % min === 0 && ((offset + data.byteLength) % min === 0 || offset + data.byteLength === this.size)) {
      await this.writeAligned(offset, data, fua)
      return
    }
    await this.readModifyWrite(offset, data.byteLength, (block, at) => Buffer.from(data.buffer, data.byteOffset, data.byteLength).copy(block, at), fua)
  }

  private async writeZeroesImpl(offset: number, length: number, fua: boolean, noHole: boolean): Promise<void> {
    this.checkWritable('zero')
    this.checkRange('zero', offset, length)
    if (length === 0) return
    if (!this.canWriteZeroes) {
      await this.writeZeroBuffers(offset, length, fua)
      return
    }
    const min = this.info.blockSizes.min
    const end = offset + length
    const a0 = alignUp(offset, min)
    const a1 = end === this.size ? end : alignDown(end, min)
    const work: Promise<void>[] = []
    // Partial blocks at either edge: read-modify-write with zeros.
    if (a0 >= a1) return this.readModifyWrite(offset, length, (block, at) => block.fill(0, at, at + length), fua)
    if (a0 > offset) work.push(this.readModifyWrite(offset, a0 - offset, (block, at) => block.fill(0, at, at + (a0 - offset)), fua))
    if (a1 < end) work.push(this.readModifyWrite(a1, end - a1, (block, at) => block.fill(0, at, at + (end - a1)), fua))
    const chunk = alignDown(ZERO_TRIM_CHUNK, min)
    const flags = (fua ? this.fuaFlag() : 0) | (noHole ? CmdFlag.NO_HOLE : 0)
    for (let off = a0; off < a1; off += chunk) work.push(this.submit(Cmd.WRITE_ZEROES, flags, off, Math.min(chunk, a1 - off)))
    await settleAll(work)
    if (fua && !this.canFua) await this.flushImpl()
  }

  private async trimImpl(offset: number, length: number): Promise<void> {
    this.checkWritable('trim')
    this.checkRange('trim', offset, length)
    if (length === 0 || !this.canTrim) return
    const min = this.info.blockSizes.min
    const a0 = alignUp(offset, min)
    const a1 = offset + length === this.size ? this.size : alignDown(offset + length, min)
    const chunk = alignDown(ZERO_TRIM_CHUNK, min)
    const work: Promise<void>[] = []
    for (let off = a0; off < a1; off += chunk) work.push(this.submit(Cmd.TRIM, 0, off, Math.min(chunk, a1 - off)))
    await settleAll(work)
  }

  private async flushImpl(): Promise<void> {
    if (!this.canFlush) return
    await this.submit(Cmd.FLUSH, 0, 0, 0)
  }

  /**
   * Wait for every request in flight, send NBD_CMD_DISC and close the socket. New requests
   * are refused from the call on. Never rejects: a broken connection is simply dropped. Waits.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      if (!this.failure && this.active > 0) await new Promise<void>((r) => (this.drained = r))
      if (this.failure) {
        this.socket.destroy()
        return
      }
      // Nothing is pending now; from here on every call is refused as "closed", not "lost".
      this.failure = new RemoteError(`${this.uri}: the connection is closed`, 'closed', 'this is a bug: the volume was used after close()')
      const closed = new Promise<void>((r) => (this.socket.destroyed ? r() : this.socket.once('close', () => r())))
      this.socket.end(requestHeader(Cmd.DISC, 0, 0, 0, 0))
      const timer = setTimeout(() => this.socket.destroy(), CLOSE_GRACE_MS)
      await closed
      clearTimeout(timer)
    })()
    return this.closing
  }

  /** Drop the connection now: every pending request fails. For tests and emergencies. */
  destroy(): void {
    this.fail(new RemoteError(`${this.uri}: the connection was dropped`, 'closed', 'this is a bug: the volume was used after destroy()'))
  }

  // -------------------------------------------------------------------------------------
  // Splitting and alignment

  private fuaFlag(): number {
    return this.canFua ? CmdFlag.FUA : 0
  }

  /**
   * Requests are at most 256 KiB (or the server's preferred size, if larger, within its
   * maximum): many moderate requests in flight keep a server's I/O queue full, where a few
   * 4 MiB ones leave it idle between them (as nbdcopy does).
   */
  private get splitBytes(): number {
    const {min, preferred, max} = this.info.blockSizes
    const want = Math.max(256 * 1024, preferred)
    if (want >= max) return max
    return Math.max(min, want - (want % min))
  }

  private async readAligned(offset: number, dest: Buffer): Promise<void> {
    const max = this.splitBytes
    const work: Promise<void>[] = []
    for (let done = 0; done < dest.length; done += max) {
      const n = Math.min(max, dest.length - done)
      work.push(this.submit(Cmd.READ, 0, offset + done, n, {dest: dest.subarray(done, done + n)}))
    }
    await settleAll(work)
  }

  private async writeAligned(offset: number, data: Uint8Array, fua: boolean): Promise<void> {
    const max = this.splitBytes
    const flags = fua ? this.fuaFlag() : 0
    const work: Promise<void>[] = []
    for (let done = 0; done < data.byteLength; done += max) {
      const n = Math.min(max, data.byteLength - done)
      work.push(this.submit(Cmd.WRITE, flags, offset + done, n, {payload: data.subarray(done, done + n)}))
    }
    await settleAll(work)
    if (fua && !this.canFua) await this.flushImpl()
  }

  private async writeZeroBuffers(offset: number, length: number, fua: boolean): Promise<void> {
    const min = this.info.blockSizes.min
    const end = offset + length
    const a0 = alignUp(offset, min)
    const a1 = end === this.size ? end : alignDown(end, min)
    if (a0 >= a1) return this.readModifyWrite(offset, length, (block, at) => block.fill(0, at, at + length), fua)
    const work: Promise<void>[] = []
    if (a0 > offset) work.push(this.readModifyWrite(offset, a0 - offset, (block, at) => block.fill(0, at, at + (a0 - offset)), false))
    if (a1 < end) work.push(this.readModifyWrite(a1, end - a1, (block, at) => block.fill(0, at, at + (end - a1)), false))
    const chunk = Math.max(min, alignDown(Math.min(ZERO_BUF_SIZE, this.info.blockSizes.max), min))
    const z = chunk <= ZERO_BUF_SIZE ? zeros() : Buffer.alloc(chunk)
    for (let off = a0; off < a1; off += chunk) {
      const n = Math.min(chunk, a1 - off)
      work.push(this.submit(Cmd.WRITE, 0, off, n, {payload: z.subarray(0, n)}))
    }
    await settleAll(work)
    if (fua) await this.flushImpl()
  }

  /**
   * Change `length` bytes at `offset` inside the server's minimum blocks: read the
   * enclosing blocks, patch them, write them back. Serialized, so two of them cannot undo
   * each other inside one block.
   */
  private readModifyWrite(offset: number, length: number, patch: (block: Buffer, at: number) => void, fua: boolean): Promise<void> {
    const min = this.info.blockSizes.min
    const a0 = alignDown(offset, min)
    const a1 = Math.min(alignUp(offset + length, min), this.size)
    const run = async (): Promise<void> => {
      const block = Buffer.allocUnsafe(a1 - a0)
      await this.readAligned(a0, block)
      patch(block, offset - a0)
      await this.writeAligned(a0, block, fua)
    }
    const p = this.rmwChain.then(run, run)
    this.rmwChain = p.catch(() => undefined)
    return p
  }

  private checkRange(what: string, offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0)
      throw new RangeError(`NbdClient.${what}: offset ${offset} and length ${length} must be non-negative integers`)
    if (offset + length > this.size)
      throw new VolumeIoError(`${what} of ${length} bytes at offset ${offset} is past the end of ${this.uri} (${this.size} bytes)`, what === 'read' ? 'EINVAL' : 'ENOSPC')
  }

  private checkWritable(what: string): void {
    if (this.readOnly)
      throw new RemoteError(`${this.uri}: the server exports it read-only; cannot ${what} it`, 'read-only', 'export it writable (qemu-nbd without --read-only, nbdkit without -r), or choose another volume', 'EPERM')
  }

  // -------------------------------------------------------------------------------------
  // Requests and replies

  private submit(type: number, flags: number, offset: number, length: number, extra: {dest?: Buffer; payload?: Uint8Array} = {}, holder?: {p?: Pending}): Promise<void> {
    if (this.failure) return Promise.reject(this.failure)
    return new Promise<void>((resolve, reject) => {
      const p: Pending = {cookie: this.nextCookie++, type, flags, offset, length, dest: extra.dest, payload: extra.payload, resolve, reject}
      if (holder) holder.p = p
      if (this.queue.length === 0 && this.canSend(p)) this.send(p)
      else this.queue.push(p)
    })
  }

  private canSend(p: Pending): boolean {
    if (this.pending.size === 0) return true
    return this.pending.size < this.maxInflight && this.inflightBytes + payloadBytes(p) <= this.maxInflightBytes
  }

  private send(p: Pending): void {
    this.pending.set(p.cookie, p)
    this.inflightBytes += payloadBytes(p)
    p.timer = setTimeout(() => this.timedOut(p), this.requestTimeoutMs)
    const h = requestHeader(p.type, p.flags, p.cookie, p.offset, p.length)
    if (p.payload) {
      this.socket.cork()
      this.socket.write(h)
      this.socket.write(p.payload)
      // Uncork on the next tick so headers and payloads of one batch share writes.
      process.nextTick(() => this.socket.uncork())
    } else this.socket.write(h)
  }

  private timedOut(p: Pending): void {
    const what = `${cmdName(p.type)}${p.type === Cmd.FLUSH ? '' : ` of ${p.length} bytes at offset ${p.offset}`}`
    this.fail(
      new RemoteError(`${this.uri}: ${what} got no answer in ${this.requestTimeoutMs} ms; the connection is dropped`, 'timeout', 'check that the NBD server and the network are healthy, then run the command again'),
    )
  }

  private complete(p: Pending, error: number): void {
    this.pending.delete(p.cookie)
    this.inflightBytes -= payloadBytes(p)
    clearTimeout(p.timer)
    if (error === 0) p.resolve()
    else {
      const name = errnoName(error)
      const text = ERRNO_TEXT[name]
      const what = `${cmdName(p.type)}${p.type === Cmd.FLUSH ? '' : ` of ${p.length} bytes at offset ${p.offset}`}`
      p.reject(new RemoteError(`${this.uri}: the server failed ${what}: ${name}${text ? ` (${text.what})` : ''}`, 'reply', text?.fix ?? "check the NBD server's log", name.startsWith('E') ? name : 'EIO'))
    }
    // In order: a large request at the head is not overtaken for ever by small ones.
    while (this.queue.length > 0 && !this.failure && this.canSend(this.queue[0])) this.send(this.queue.shift()!)
  }

  private onData(chunk: Buffer): void {
    let pos = 0
    while (pos < chunk.length && !this.failure) {
      const cur = this.cur
      if (cur) {
        const n = Math.min(cur.length - this.curDone, chunk.length - pos)
        chunk.copy(cur.dest!, this.curDone, pos, pos + n)
        this.curDone += n
        pos += n
        if (this.curDone === cur.length) {
          this.cur = undefined
          this.complete(cur, 0)
        }
        continue
      }
      if (this.chunk) {
        pos = this.chunkBody(this.chunk, chunk, pos)
        continue
      }
      // The magic first: it says how long the header is.
      const need = this.hdrFill < 4 || this.hdr.readUInt32BE(0) !== STRUCTURED_REPLY_MAGIC ? SIMPLE_REPLY_SIZE : STRUCTURED_REPLY_SIZE
      const upTo = this.hdrFill < 4 ? 4 : need
      const n = Math.min(upTo - this.hdrFill, chunk.length - pos)
      chunk.copy(this.hdr, this.hdrFill, pos, pos + n)
      this.hdrFill += n
      pos += n
      if (this.hdrFill < 4 || this.hdrFill < (this.hdr.readUInt32BE(0) === STRUCTURED_REPLY_MAGIC ? STRUCTURED_REPLY_SIZE : SIMPLE_REPLY_SIZE)) continue
      this.hdrFill = 0
      const magic = this.hdr.readUInt32BE(0)
      if (magic === STRUCTURED_REPLY_MAGIC && this.info.structured) {
        this.chunkHeader()
        continue
      }
      if (magic !== SIMPLE_REPLY_MAGIC) {
        const why = magic === STRUCTURED_REPLY_MAGIC ? 'a structured reply, which was not negotiated' : `a reply with bad magic 0x${magic.toString(16)}`
        return this.fail(new RemoteError(`${this.uri}: protocol error: the server sent ${why}`, 'protocol', 'this is a bug in the NBD server or in clonectl; report it'))
      }
      const error = this.hdr.readUInt32BE(4)
      const cookie = this.hdr.readUInt32BE(8) * TWO32 + this.hdr.readUInt32BE(12)
      const p = this.pending.get(cookie)
      if (!p) return this.fail(new RemoteError(`${this.uri}: protocol error: a reply for unknown cookie ${cookie}`, 'protocol', 'this is a bug in the NBD server or in clonectl; report it'))
      // After structured replies, READ and BLOCK_STATUS must not get simple replies (proto.md).
      if (this.info.structured && (p.type === Cmd.READ || p.type === Cmd.BLOCK_STATUS) && error === 0)
        return this.protocolError(`a simple reply to ${cmdName(p.type)} after structured replies were negotiated`)
      if (p.type === Cmd.READ && error === 0 && p.length > 0) {
        this.cur = p
        this.curDone = 0
      } else this.complete(p, error)
    }
  }

  private protocolError(what: string): void {
    this.fail(new RemoteError(`${this.uri}: protocol error: ${what}`, 'protocol', 'this is a bug in the NBD server or in clonectl; report it'))
  }

  /** A structured chunk header is in `hdr`: check it against its request, then gather its payload. */
  private chunkHeader(): void {
    const flags = this.hdr.readUInt16BE(4)
    const type = this.hdr.readUInt16BE(6)
    const cookie = this.hdr.readUInt32BE(8) * TWO32 + this.hdr.readUInt32BE(12)
    const length = this.hdr.readUInt32BE(16)
    const p = this.pending.get(cookie)
    if (!p) return this.protocolError(`a structured reply for unknown cookie ${cookie}`)
    const fits =
      type === ReplyType.NONE ? length === 0 && (flags & ReplyFlag.DONE) !== 0
      : type === ReplyType.OFFSET_DATA ? p.type === Cmd.READ && length > 8
      : type === ReplyType.OFFSET_HOLE ? p.type === Cmd.READ && length === 12
      : type === ReplyType.BLOCK_STATUS ? p.type === Cmd.BLOCK_STATUS && length >= 12 && (length - 4) % 8 === 0 && length <= MAX_CHUNK
      : type === ReplyType.ERROR || type === ReplyType.ERROR_OFFSET ? length >= 6 && length <= MAX_CHUNK
      : false
    if (!fits) return this.protocolError(`a structured reply of type ${type} (${length} bytes) to ${cmdName(p.type)}`)
    const headLen = type === ReplyType.OFFSET_DATA ? 8 : length
    this.chunk = {p, flags, type, length, dataLeft: type === ReplyType.OFFSET_DATA ? length - 8 : 0, destAt: 0, head: Buffer.allocUnsafe(headLen), headFill: 0}
    if (length === 0) this.chunkDone(this.chunk)
  }

  /** Feed a chunk's payload from `buf` at `pos`; returns where it stopped. */
  private chunkBody(c: ChunkState, buf: Buffer, pos: number): number {
    if (c.headFill < c.head.length) {
      const n = Math.min(c.head.length - c.headFill, buf.length - pos)
      buf.copy(c.head, c.headFill, pos, pos + n)
      c.headFill += n
      pos += n
      if (c.headFill < c.head.length) return pos
      if (c.type === ReplyType.OFFSET_DATA) {
        const off = c.head.readUInt32BE(0) * TWO32 + c.head.readUInt32BE(4)
        c.destAt = off - c.p.offset
        if (c.destAt < 0 || c.destAt + c.dataLeft > c.p.length) {
          this.protocolError(`READ data at offset ${off} (+${c.dataLeft}) outside the request at ${c.p.offset} (+${c.p.length})`)
          return buf.length
        }
      }
    }
    if (c.dataLeft > 0) {
      const n = Math.min(c.dataLeft, buf.length - pos)
      buf.copy(c.p.dest!, c.destAt, pos, pos + n)
      c.destAt += n
      c.dataLeft -= n
      c.p.got = (c.p.got ?? 0) + n
      pos += n
      if (c.dataLeft > 0) return pos
    }
    this.chunkDone(c)
    return pos
  }

  /** A chunk's payload is complete: apply it; on DONE, complete its request. */
  private chunkDone(c: ChunkState): void {
    this.chunk = undefined
    const {p, head} = c
    switch (c.type) {
      case ReplyType.OFFSET_HOLE: {
        const off = head.readUInt32BE(0) * TWO32 + head.readUInt32BE(4)
        const len = head.readUInt32BE(8)
        const at = off - p.offset
        if (at < 0 || len === 0 || at + len > p.length) return this.protocolError(`a READ hole at offset ${off} (+${len}) outside the request at ${p.offset} (+${p.length})`)
        p.dest!.fill(0, at, at + len)
        p.got = (p.got ?? 0) + len
        break
      }
      case ReplyType.ERROR:
      case ReplyType.ERROR_OFFSET: {
        const msgLen = head.readUInt16BE(4)
        if (6 + msgLen > head.length) return this.protocolError(`an error chunk whose message overruns it`)
        p.error ??= head.readUInt32BE(0) || Errno.EIO
        break
      }
      case ReplyType.BLOCK_STATUS:
        if (head.readUInt32BE(0) === this.info.allocationContext) {
          const runs: StatusRun[] = []
          for (let q = 4; q < head.length; q += 8) {
            const length = head.readUInt32BE(q)
            if (length > 0) runs.push({length, flags: head.readUInt32BE(q + 4)})
          }
          p.runs = runs
        }
        break
      default:
        break
    }
    if (!(c.flags & ReplyFlag.DONE)) return
    if (p.error) return this.complete(p, p.error)
    // Chunks may overlap only by a broken server; short of that, covering every byte once is the rule.
    if (p.type === Cmd.READ && (p.got ?? 0) !== p.length) return this.protocolError(`READ of ${p.length} bytes at offset ${p.offset} answered with ${p.got ?? 0} bytes`)
    this.complete(p, 0)
  }

  private lostError(e?: Error): RemoteError {
    const code = e ? errnoOf(e) : undefined
    return new RemoteError(
      `${this.uri}: connection lost (${code ?? (e ? e.message : 'the server closed it')})`,
      'lost',
      'check that the NBD server is running, then run the command again',
    )
  }

  /** Tear the connection down: every pending and queued request fails with `e`. */
  private fail(e: RemoteError): void {
    if (this.failure) return
    this.failure = e
    this.socket.destroy()
    const all = [...this.pending.values(), ...this.queue]
    this.pending.clear()
    this.queue.length = 0
    this.inflightBytes = 0
    this.cur = undefined
    this.chunk = undefined
    for (const p of all) {
      clearTimeout(p.timer)
      p.reject(e)
    }
    if (this.drained) {
      const d = this.drained
      this.drained = undefined
      d()
    }
  }
}

// ---------------------------------------------------------------------------------------
// The handshake

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- socket listeners of any event
type Listener = (...args: any[]) => void

/** Connects, negotiates, and hands over the socket; everything here is under one deadline. */
class Handshake {
  private socket?: Socket | TLSSocket
  private readonly q = new ByteQueue()
  private wake?: () => void
  private error?: Error
  private tlsDone = false
  private connected = false
  private readonly listeners: {s: Socket | TLSSocket; event: string; fn: Listener}[] = []

  constructor(
    private readonly t: NbdUri,
    private readonly opts: NbdClientOptions,
    private readonly tlsOpts: ConnectionOptions | undefined,
  ) {}

  private err(reason: RemoteErrorReason, what: string, fix: string): RemoteError {
    return new RemoteError(`${this.t.uri}: ${what}`, reason, fix)
  }

  async run(): Promise<{socket: Socket | TLSSocket; info: NbdExportInfo}> {
    const timeoutMs = this.opts.connectTimeoutMs ?? 10_000
    const signal = this.opts.signal
    if (signal?.aborted) throw abortReason(signal)
    const onAbort = (): void => this.abort(abortReason(signal!))
    signal?.addEventListener('abort', onAbort, {once: true})
    const timer = setTimeout(
      () =>
        this.abort(
          this.err(
            'timeout',
            `no NBD handshake from ${describeTransport(this.t.transport)} within ${timeoutMs} ms`,
            'check the address, that an NBD server (not something else) listens there, and firewalls; raise the connect timeout for a slow link',
          ),
        ),
      timeoutMs,
    )
    try {
      const info = await this.negotiate()
      const socket = this.socket!
      this.detach(socket)
      if (this.q.length > 0) throw this.err('protocol', 'protocol error: the server sent data after the handshake, before any request', 'this is a bug in the NBD server; report it')
      return {socket, info}
    } catch (error) {
      this.socket?.destroy()
      throw error
    } finally {
      clearTimeout(timer)
      signal?.removeEventListener('abort', onAbort)
    }
  }

  private abort(e: Error): void {
    this.error ??= e
    this.socket?.destroy()
    this.wakeUp()
  }

  private wakeUp(): void {
    const w = this.wake
    this.wake = undefined
    w?.()
  }

  private attach(s: Socket | TLSSocket): void {
    const on = (event: string, fn: Listener): void => {
      s.on(event, fn)
      this.listeners.push({s, event, fn})
    }
    on('data', (b: Buffer) => {
      this.q.push(b)
      this.wakeUp()
    })
    on('error', (e: Error) => {
      this.error ??= this.socketError(e)
      this.wakeUp()
    })
    on('close', () => {
      this.error ??= this.err('handshake', `the server at ${describeTransport(this.t.transport)} closed the connection during the NBD handshake`, 'check the export name and the server log (a server needing TLS may close on a plain client)')
      this.wakeUp()
    })
  }

  /** Remove only our own listeners: Node's internal ones on the socket must stay. */
  private detach(s: Socket | TLSSocket): void {
    for (const l of this.listeners.filter((x) => x.s === s)) s.removeListener(l.event, l.fn)
  }

  private socketError(e: Error): RemoteError {
    const code = errnoOf(e)
    const where = describeTransport(this.t.transport)
    if (!this.connected) {
      const fixRunning = 'check that the NBD server is running and listening there'
      switch (code) {
        case 'ENOENT':
          return this.err('connect', `cannot connect: no socket at ${this.t.transport.kind === 'unix' ? this.t.transport.path : where} (ENOENT)`, fixRunning)
        case 'ECONNREFUSED':
          return this.err('connect', `cannot connect to ${where}: connection refused (ECONNREFUSED)`, fixRunning)
        case 'EACCES':
          return this.err('connect', `cannot connect to ${where}: permission denied (EACCES)`, 'run as a user that may open the socket')
        case 'ENOTFOUND':
        case 'EAI_AGAIN':
          return this.err('connect', `cannot resolve the host ${this.t.transport.kind === 'tcp' ? this.t.transport.host : ''} (${code})`, 'check the host name and DNS')
        default:
          return this.err('connect', `cannot connect to ${where} (${code ?? e.message})`, fixRunning)
      }
    }
    if (code && /CERT|SSL|TLS|ERR_OSSL|SELF_SIGNED|UNABLE_TO|HOSTNAME|ALTNAME/.test(code) && !this.tlsDone) return this.tlsError(e)
    return this.err('lost', `connection lost during the NBD handshake (${code ?? e.message})`, 'check that the NBD server is running, then run the command again')
  }

  private tlsError(e: Error): RemoteError {
    const code = errnoOf(e) ?? ''
    if (/UNABLE_TO_VERIFY|SELF_SIGNED|UNABLE_TO_GET_ISSUER|CERT_UNTRUSTED|CERT_SIGNATURE_FAILURE/.test(code))
      return this.err('tls', `TLS: the server's certificate is not signed by a trusted CA (${code})`, 'put the CA that signed the server certificate in tls-certificates=DIR/ca-cert.pem')
    if (/ALTNAME|HOSTNAME/.test(code))
      return this.err('tls', `TLS: the server's certificate does not name this host (${e.message})`, 'connect with the name in the certificate, or set tls-hostname=NAME')
    if (/EXPIRED|NOT_YET_VALID/.test(code)) return this.err('tls', `TLS: the server's certificate is not valid now (${code})`, 'renew the certificate, or check the clocks')
    return this.err('tls', `TLS handshake failed (${code || e.message})`, 'check the TLS credentials on both sides (a server that verifies clients needs client-cert.pem and client-key.pem)')
  }

  private async readExactly(n: number): Promise<Buffer> {
    while (this.q.length < n) {
      if (this.error) throw this.error
      await new Promise<void>((r) => (this.wake = r))
    }
    // Bytes that arrived before a close are still read: an error reply often precedes the close.
    return this.q.take(n)
  }

  private write(b: Buffer): void {
    this.socket!.write(b)
  }

  private async openTransport(): Promise<void> {
    const tr = this.t.transport
    const s = tr.kind === 'unix' ? netConnect({path: tr.path}) : netConnect({host: tr.host, port: tr.port})
    this.socket = s
    this.attach(s)
    if (this.error) s.destroy() // aborted before the socket existed
    await new Promise<void>((resolve, reject) => {
      if (this.error) return reject(this.error)
      s.once('connect', () => {
        this.connected = true
        resolve()
      })
      const prev = this.wake
      this.wake = () => {
        prev?.()
        reject(this.error ?? new Error('connect failed'))
      }
    })
    this.wake = undefined
  }

  private async negotiate(): Promise<NbdExportInfo> {
    await this.openTransport()
    const where = describeTransport(this.t.transport)
    const g = await this.readExactly(GREETING_SIZE - 2)
    if (g.readBigUInt64BE(0) !== NBDMAGIC) throw this.err('handshake', `${where} is not an NBD server (no NBDMAGIC greeting)`, 'check the address and port')
    if (g.readBigUInt64BE(8) !== IHAVEOPT) throw this.err('handshake', `${where} speaks the oldstyle NBD protocol, which clonectl does not support`, 'run the server in newstyle mode (nbd-server has no -o, qemu-nbd without --oldstyle)')
    const hflags = (await this.readExactly(2)).readUInt16BE(0)
    if (!(hflags & HandshakeFlag.FIXED_NEWSTYLE)) throw this.err('handshake', `${where} does not support fixed newstyle negotiation`, 'upgrade the NBD server')
    const noZeroes = (hflags & HandshakeFlag.NO_ZEROES) !== 0
    this.write(encodeClientFlags(ClientFlag.FIXED_NEWSTYLE | (noZeroes ? ClientFlag.NO_ZEROES : 0)))

    if (this.tlsOpts) await this.startTls()

    const status = await this.negotiateStatus()

    // DESCRIPTION too: clonectl's own server names its group there (a clone must not be the source).
    this.write(encodeOption(Opt.GO, encodeGoData(this.t.exportName, [Info.BLOCK_SIZE, Info.DESCRIPTION])))
    let size: bigint | undefined
    let flags = 0
    let bs: {min: number; preferred: number; max: number} | undefined
    let description: string | undefined
    for (;;) {
      const {type, data} = await this.optionReply(Opt.GO)
      if (type === Rep.ACK) break
      if (type === Rep.INFO) {
        const info = decodeInfo(data)
        if (!info) throw this.err('protocol', 'protocol error: a malformed NBD_REP_INFO reply to NBD_OPT_GO', 'this is a bug in the NBD server; report it')
        if (info.type === Info.EXPORT) {
          size = info.size
          flags = info.flags
        } else if (info.type === Info.BLOCK_SIZE) bs = info
        else if (info.type === Info.DESCRIPTION) description = info.description
        continue
      }
      if (type === Rep.ERR_UNSUP) return {...(await this.exportName(noZeroes)), ...status}
      throw this.optionError(Opt.GO, type, data)
    }
    if (size === undefined) throw this.err('protocol', 'protocol error: the server acknowledged NBD_OPT_GO without sending the export size', 'this is a bug in the NBD server; report it')
    return {...this.makeInfo(size, flags, bs, description, 'go'), ...status}
  }

  /**
   * NBD_OPT_STRUCTURED_REPLY, then NBD_OPT_SET_META_CONTEXT for base:allocation. A refusal
   * of either (any error reply) leaves the connection as it was: simple replies, no status.
   */
  private async negotiateStatus(): Promise<{structured: boolean; allocationContext?: number}> {
    this.write(encodeOption(Opt.STRUCTURED_REPLY))
    const sr = await this.optionReply(Opt.STRUCTURED_REPLY)
    if (sr.type !== Rep.ACK) {
      if (isRepError(sr.type)) return {structured: false}
      throw this.optionError(Opt.STRUCTURED_REPLY, sr.type, sr.data)
    }
    this.write(encodeOption(Opt.SET_META_CONTEXT, encodeMetaContextRequest(this.t.exportName, ['base:allocation'])))
    let allocationContext: number | undefined
    for (;;) {
      const {type, data} = await this.optionReply(Opt.SET_META_CONTEXT)
      if (type === Rep.ACK || isRepError(type)) break
      const m = type === Rep.META_CONTEXT ? decodeMetaContextReply(data) : undefined
      if (!m) throw this.err('protocol', `protocol error: reply type ${type} to NBD_OPT_SET_META_CONTEXT`, 'this is a bug in the NBD server; report it')
      if (m.name === 'base:allocation') allocationContext = m.id
    }
    return {structured: true, allocationContext}
  }

  private async startTls(): Promise<void> {
    this.write(encodeOption(Opt.STARTTLS))
    const {type, data} = await this.optionReply(Opt.STARTTLS)
    if (type === Rep.ERR_UNSUP || type === Rep.ERR_POLICY || type === Rep.ERR_INVALID)
      throw this.err('tls', `the server does not offer TLS (${repName(type)}${data.length ? `: ${data.toString('utf8')}` : ''})`, 'configure TLS on the server (qemu-nbd --tls-creds, nbdkit --tls=require), or use an nbd:// URI without TLS')
    if (type !== Rep.ACK) throw this.optionError(Opt.STARTTLS, type, data)
    if (this.q.length > 0) throw this.err('protocol', 'protocol error: the server sent data after accepting NBD_OPT_STARTTLS', 'this is a bug in the NBD server; report it')
    const raw = this.socket as Socket
    this.detach(raw)
    const tr = this.t.transport
    // Verify the certificate against the URI's host (or tls-hostname); SNI only for names, never IPs.
    const host = this.tlsOpts!.servername ?? this.t.tlsHostname ?? (tr.kind === 'tcp' ? tr.host : 'localhost')
    const s = tlsConnect({...this.tlsOpts, socket: raw, host, servername: isIP(host) ? undefined : host})
    this.socket = s
    this.attach(s)
    await new Promise<void>((resolve, reject) => {
      s.once('secureConnect', () => resolve())
      this.wake = () => reject(this.error ?? new Error('TLS failed'))
    })
    this.wake = undefined
    this.tlsDone = true
    if (this.error) throw this.error
  }

  private async exportName(noZeroes: boolean): Promise<NbdExportInfo> {
    this.write(encodeOption(Opt.EXPORT_NAME, Buffer.from(this.t.exportName, 'utf8')))
    let r: Buffer
    try {
      r = await this.readExactly(EXPORT_NAME_REPLY_SIZE + (noZeroes ? 0 : EXPORT_NAME_ZERO_PAD))
    } catch (error) {
      if (error instanceof RemoteError && error.reason === 'handshake')
        throw this.err('handshake', `the server closed the connection: it has no export named "${this.t.exportName}" (NBD_OPT_EXPORT_NAME)`, 'check the export name (nbdinfo --list URI)')
      throw error
    }
    const d = decodeExportNameReply(r)!
    return this.makeInfo(d.size, d.flags, undefined, undefined, 'export-name')
  }

  private makeInfo(size: bigint, flags: number, bs: {min: number; preferred: number; max: number} | undefined, description: string | undefined, how: 'go' | 'export-name'): NbdExportInfo {
    if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw this.err('handshake', `the export is ${size} bytes, larger than clonectl supports (2^53 - 1)`, 'use a smaller export')
    if (!(flags & TxFlag.HAS_FLAGS)) flags = 0 // no flag may be trusted without HAS_FLAGS
    const valid = bs !== undefined && isPow2(bs.min) && bs.min <= 65536 && isPow2(bs.preferred) && bs.preferred >= bs.min && bs.max >= bs.min && (bs.max % bs.min === 0 || bs.max === 0xffffffff)
    const min = valid ? bs.min : 1
    const max = valid ? Math.max(min, alignDown(Math.min(bs.max, MAX_PAYLOAD), min)) : MAX_PAYLOAD
    return {
      size: Number(size),
      flags,
      blockSizes: {min, preferred: valid ? bs.preferred : 4096, max},
      blockSizesFromServer: valid,
      description,
      negotiatedWith: how,
      tls: this.tlsDone,
    }
  }

  private async optionReply(option: number): Promise<{type: number; data: Buffer}> {
    const h = decodeOptionReplyHeader(await this.readExactly(OPTION_REPLY_HEADER_SIZE))
    if (!h) throw this.err('protocol', `protocol error: a bad option reply to ${optName(option)}`, 'check that an NBD server listens there')
    if (h.length > 64 * 1024 * 1024) throw this.err('protocol', `protocol error: a ${h.length}-byte option reply`, 'this is a bug in the NBD server; report it')
    const data = h.length ? Buffer.from(await this.readExactly(h.length)) : Buffer.alloc(0)
    if (h.option !== option) throw this.err('protocol', `protocol error: a reply to ${optName(h.option)} when ${optName(option)} was sent`, 'this is a bug in the NBD server; report it')
    return {type: h.type, data}
  }

  private optionError(option: number, type: number, data: Buffer): RemoteError {
    const text = data.length ? `: ${data.toString('utf8')}` : ''
    const name = JSON.stringify(this.t.exportName)
    switch (type) {
      case Rep.ERR_UNKNOWN:
        return this.err('handshake', `the server has no export named ${name}${text}`, 'check the export name (nbdinfo --list URI)')
      case Rep.ERR_TLS_REQD:
        return this.err('tls', `the server requires TLS${text}`, 'use an nbds:// URI with ?tls-certificates=DIR or ?tls-psk-file=FILE')
      case Rep.ERR_POLICY:
        return this.err('handshake', `the server refused ${optName(option)} by policy${text}`, 'check the server configuration (allowed clients, TLS)')
      case Rep.ERR_SHUTDOWN:
        return this.err('handshake', `the server is shutting down${text}`, 'wait for the NBD server to come back, then run the command again')
      default:
        return this.err('handshake', `the server answered ${optName(option)} with ${isRepError(type) ? repName(type) : `unexpected reply type ${type}`}${text}`, "check the server's log")
    }
  }
}

// ---------------------------------------------------------------------------------------
// Helpers

/** Bytes a request moves over the wire besides headers (READ data back, WRITE data out). */
const payloadBytes = (p: Pending): number => (p.type === Cmd.READ || p.type === Cmd.WRITE ? p.length : 0)

function requestHeader(type: number, flags: number, cookie: number, offset: number, length: number): Buffer {
  const b = Buffer.allocUnsafe(REQUEST_SIZE)
  b.writeUInt32BE(REQUEST_MAGIC, 0)
  b.writeUInt16BE(flags, 4)
  b.writeUInt16BE(type, 6)
  b.writeUInt32BE(Math.floor(cookie / TWO32), 8)
  b.writeUInt32BE(cookie >>> 0, 12)
  b.writeUInt32BE(Math.floor(offset / TWO32), 16)
  b.writeUInt32BE(offset >>> 0, 20)
  b.writeUInt32BE(length >>> 0, 24)
  return b
}

const repNames = new Map<number, string>(Object.entries(Rep).map(([k, v]) => [v, `NBD_REP_${k}`]))
const repName = (t: number): string => repNames.get(t) ?? `reply type 0x${t.toString(16)}`

const isPow2 = (n: number): boolean => n > 0 && (n & (n - 1)) === 0
const alignDown = (n: number, a: number): number => n - (n % a)
const alignUp = (n: number, a: number): number => (n % a === 0 ? n : n + a - (n % a))

/** Wait for all, then throw the first failure: no request is left running unobserved. */
async function settleAll(work: Promise<void>[]): Promise<void> {
  if (work.length === 1) return work[0]
  const r = await Promise.allSettled(work)
  for (const x of r) if (x.status === 'rejected') throw x.reason
}

function abortReason(signal: AbortSignal): Error {
  const r: unknown = signal.reason
  return r instanceof Error && r.name !== 'AbortError' ? r : new InterruptedError('interrupted while connecting to the NBD server')
}
