/**
 * NBD protocol constants and codec (NetworkBlockDevice/nbd doc/proto.md): the fixed
 * newstyle handshake, option haggling, requests and simple replies. One codec for both
 * roles: the server (NbdServer) and a client (tests today, an NBD-remote volume later).
 *
 * Every number on the wire is big-endian. Decoders never read past the buffer they are
 * given and answer `undefined` for anything malformed; they do not throw.
 *
 * Two request/reply layers:
 * - `Request` / `encodeRequest` / `decodeRequest`: cookies and offsets as bigint, exact
 *   for any 64-bit value. For clients and tests.
 * - `RequestHeader` / `readRequestHeader` / `writeSimpleReplyHeader`: no bigint, no
 *   allocation beyond the header object; the cookie stays two opaque 32-bit halves that
 *   are echoed back. For the server's hot path.
 */

// ---------------------------------------------------------------------------------------
// Magic numbers and sizes

/** "NBDMAGIC", the first 8 bytes the server sends. */
export const NBDMAGIC = 0x4e42444d41474943n
/** "IHAVEOPT": newstyle greeting, and the magic of every option the client sends. */
export const IHAVEOPT = 0x49484156454f5054n
export const OPT_REPLY_MAGIC = 0x3e889045565a9n
export const REQUEST_MAGIC = 0x25609513
export const SIMPLE_REPLY_MAGIC = 0x67446698
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef

export const GREETING_SIZE = 18
export const CLIENT_FLAGS_SIZE = 4
export const OPTION_HEADER_SIZE = 16
export const OPTION_REPLY_HEADER_SIZE = 20
export const REQUEST_SIZE = 28
export const SIMPLE_REPLY_SIZE = 16
/** NBD_OPT_EXPORT_NAME's reply: size (8), transmission flags (2), then 124 zero bytes unless NO_ZEROES. */
export const EXPORT_NAME_REPLY_SIZE = 10
export const EXPORT_NAME_ZERO_PAD = 124

// ---------------------------------------------------------------------------------------
// Flags and codes

/** Handshake flags (server → client, 16 bits). */
export const HandshakeFlag = {FIXED_NEWSTYLE: 1, NO_ZEROES: 2} as const
/** Client flags (client → server, 32 bits). Any other bit set: the server closes. */
export const ClientFlag = {FIXED_NEWSTYLE: 1, NO_ZEROES: 2} as const

export const Opt = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  PEEK_EXPORT: 4,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const

/** Option reply types; errors have bit 31 set. */
export const Rep = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: 0x80000001,
  ERR_POLICY: 0x80000002,
  ERR_INVALID: 0x80000003,
  ERR_PLATFORM: 0x80000004,
  ERR_TLS_REQD: 0x80000005,
  ERR_UNKNOWN: 0x80000006,
  ERR_SHUTDOWN: 0x80000007,
  ERR_BLOCK_SIZE_REQD: 0x80000008,
  ERR_TOO_BIG: 0x80000009,
} as const

export const isRepError = (type: number): boolean => type >= 0x80000000

/** NBD_INFO_* types, in NBD_REP_INFO replies and in OPT_INFO/OPT_GO requests. */
export const Info = {EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3} as const

/** Transmission flags (16 bits, in NBD_INFO_EXPORT and the EXPORT_NAME reply). */
export const TxFlag = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
} as const

export const Cmd = {READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7} as const
export const CmdFlag = {FUA: 1, NO_HOLE: 2, DF: 4, REQ_ONE: 8, FAST_ZERO: 16} as const

/** The error values NBD allows on the wire (proto.md "Error values"). */
export const Errno = {OK: 0, EPERM: 1, EIO: 5, ENOMEM: 12, EINVAL: 22, ENOSPC: 28, EOVERFLOW: 75, ENOTSUP: 95, ESHUTDOWN: 108} as const
export type ErrnoName = keyof typeof Errno

/** Advertised block sizes: minimum, preferred, maximum (DESIGN §5). */
export const BLOCK_MIN = 512
export const BLOCK_PREFERRED = 4096
export const BLOCK_MAX = 32 * 1024 * 1024

/** Host errno names (Node's `code`) and what each becomes on the wire; anything else is EIO. */
const hostErrno: Record<string, number> = {
  EPERM: Errno.EPERM,
  EROFS: Errno.EPERM,
  EINVAL: Errno.EINVAL,
  ENOSPC: Errno.ENOSPC,
  EDQUOT: Errno.ENOSPC, // proto.md: map EDQUOT and EFBIG to ENOSPC
  EFBIG: Errno.ENOSPC,
  EOVERFLOW: Errno.EOVERFLOW,
  ESHUTDOWN: Errno.ESHUTDOWN,
  ENOTSUP: Errno.ENOTSUP,
}

/**
 * The NBD error for a failure: `.errno` when it is a string (VolumeIoError, the engine's
 * errors), else `.code` (Node system errors), mapped as above; EIO for anything else.
 */
export function nbdErrnoOf(error: unknown): number {
  if (error && typeof error === 'object') {
    const {errno, code} = error as {errno?: unknown; code?: unknown}
    const name = typeof errno === 'string' ? errno : typeof code === 'string' ? code : undefined
    if (name !== undefined && Object.hasOwn(hostErrno, name)) return hostErrno[name]
  }
  return Errno.EIO
}

/** "EINVAL" for 22, "errno 99" for a value NBD does not define. */
export function errnoName(value: number): string {
  for (const [k, v] of Object.entries(Errno)) if (v === value) return k
  return `errno ${value}`
}

const optNames = new Map<number, string>(Object.entries(Opt).map(([k, v]) => [v, `NBD_OPT_${k}`]))
const cmdNames = new Map<number, string>(Object.entries(Cmd).map(([k, v]) => [v, `NBD_CMD_${k}`]))
export const optName = (o: number): string => optNames.get(o) ?? `option ${o}`
export const cmdName = (c: number): string => cmdNames.get(c) ?? `command ${c}`

const EMPTY = Buffer.alloc(0)

// ---------------------------------------------------------------------------------------
// Handshake

export function encodeServerGreeting(flags: number = HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES): Buffer {
  const b = Buffer.alloc(GREETING_SIZE)
  b.writeBigUInt64BE(NBDMAGIC, 0)
  b.writeBigUInt64BE(IHAVEOPT, 8)
  b.writeUInt16BE(flags, 16)
  return b
}

/** The newstyle greeting's handshake flags; undefined for oldstyle or garbage. */
export function decodeServerGreeting(b: Buffer): {flags: number} | undefined {
  if (b.length < GREETING_SIZE || b.readBigUInt64BE(0) !== NBDMAGIC || b.readBigUInt64BE(8) !== IHAVEOPT) return undefined
  return {flags: b.readUInt16BE(16)}
}

export function encodeClientFlags(flags: number): Buffer {
  const b = Buffer.alloc(CLIENT_FLAGS_SIZE)
  b.writeUInt32BE(flags >>> 0, 0)
  return b
}

// ---------------------------------------------------------------------------------------
// Options (client → server) and option replies (server → client)

export function encodeOption(option: number, data: Buffer = EMPTY): Buffer {
  const b = Buffer.alloc(OPTION_HEADER_SIZE + data.length)
  b.writeBigUInt64BE(IHAVEOPT, 0)
  b.writeUInt32BE(option >>> 0, 8)
  b.writeUInt32BE(data.length, 12)
  data.copy(b, OPTION_HEADER_SIZE)
  return b
}

/** An option header (16 bytes at `pos`); undefined when the magic is wrong. */
export function decodeOptionHeader(b: Buffer, pos = 0): {option: number; length: number} | undefined {
  if (b.length - pos < OPTION_HEADER_SIZE || b.readBigUInt64BE(pos) !== IHAVEOPT) return undefined
  return {option: b.readUInt32BE(pos + 8), length: b.readUInt32BE(pos + 12)}
}

export function encodeOptionReply(option: number, type: number, data: Buffer = EMPTY): Buffer {
  const b = Buffer.alloc(OPTION_REPLY_HEADER_SIZE + data.length)
  b.writeBigUInt64BE(OPT_REPLY_MAGIC, 0)
  b.writeUInt32BE(option >>> 0, 8)
  b.writeUInt32BE(type >>> 0, 12)
  b.writeUInt32BE(data.length, 16)
  data.copy(b, OPTION_REPLY_HEADER_SIZE)
  return b
}

/** An option reply header (20 bytes at `pos`); undefined when the magic is wrong. */
export function decodeOptionReplyHeader(b: Buffer, pos = 0): {option: number; type: number; length: number} | undefined {
  if (b.length - pos < OPTION_REPLY_HEADER_SIZE || b.readBigUInt64BE(pos) !== OPT_REPLY_MAGIC) return undefined
  return {option: b.readUInt32BE(pos + 8), type: b.readUInt32BE(pos + 12), length: b.readUInt32BE(pos + 16)}
}

/** The data of NBD_OPT_INFO / NBD_OPT_GO: export name, then the NBD_INFO_* types asked for. */
export function encodeGoData(name: string, infos: readonly number[] = []): Buffer {
  const n = Buffer.from(name, 'utf8')
  const b = Buffer.alloc(4 + n.length + 2 + infos.length * 2)
  b.writeUInt32BE(n.length, 0)
  n.copy(b, 4)
  b.writeUInt16BE(infos.length, 4 + n.length)
  infos.forEach((t, i) => b.writeUInt16BE(t, 4 + n.length + 2 + i * 2))
  return b
}

/** Decode NBD_OPT_INFO / NBD_OPT_GO data; undefined unless the lengths add up exactly. */
export function decodeGoData(data: Buffer): {name: string; infos: number[]} | undefined {
  if (data.length < 6) return undefined
  const nameLen = data.readUInt32BE(0)
  if (nameLen > data.length - 6) return undefined
  const name = data.toString('utf8', 4, 4 + nameLen)
  const n = data.readUInt16BE(4 + nameLen)
  if (4 + nameLen + 2 + n * 2 !== data.length) return undefined
  const infos: number[] = []
  for (let i = 0; i < n; i++) infos.push(data.readUInt16BE(4 + nameLen + 2 + i * 2))
  return {name, infos}
}

/** NBD_REP_SERVER data (a reply to NBD_OPT_LIST): name, then optional human-readable details. */
export function encodeServerReplyData(name: string, details = ''): Buffer {
  const n = Buffer.from(name, 'utf8')
  const d = Buffer.from(details, 'utf8')
  const b = Buffer.alloc(4 + n.length + d.length)
  b.writeUInt32BE(n.length, 0)
  n.copy(b, 4)
  d.copy(b, 4 + n.length)
  return b
}

export function decodeServerReplyData(data: Buffer): {name: string; details: string} | undefined {
  if (data.length < 4) return undefined
  const n = data.readUInt32BE(0)
  if (n > data.length - 4) return undefined
  return {name: data.toString('utf8', 4, 4 + n), details: data.toString('utf8', 4 + n)}
}

export function encodeInfoExport(size: number, flags: number): Buffer {
  const b = Buffer.alloc(12)
  b.writeUInt16BE(Info.EXPORT, 0)
  b.writeBigUInt64BE(BigInt(size), 2)
  b.writeUInt16BE(flags, 10)
  return b
}

export function encodeInfoBlockSize(min: number = BLOCK_MIN, preferred: number = BLOCK_PREFERRED, max: number = BLOCK_MAX): Buffer {
  const b = Buffer.alloc(14)
  b.writeUInt16BE(Info.BLOCK_SIZE, 0)
  b.writeUInt32BE(min, 2)
  b.writeUInt32BE(preferred, 6)
  b.writeUInt32BE(max, 10)
  return b
}

/** NBD_INFO_NAME or NBD_INFO_DESCRIPTION: the type, then UTF-8 text. */
export function encodeInfoText(type: number, text: string): Buffer {
  const t = Buffer.from(text, 'utf8')
  const b = Buffer.alloc(2 + t.length)
  b.writeUInt16BE(type, 0)
  t.copy(b, 2)
  return b
}

export type InfoReply =
  | {type: typeof Info.EXPORT; size: bigint; flags: number}
  | {type: typeof Info.NAME; name: string}
  | {type: typeof Info.DESCRIPTION; description: string}
  | {type: typeof Info.BLOCK_SIZE; min: number; preferred: number; max: number}
  | {type: 'unknown'; info: number}

/** The data of an NBD_REP_INFO reply; undefined when a known type has the wrong length. */
export function decodeInfo(data: Buffer): InfoReply | undefined {
  if (data.length < 2) return undefined
  const t = data.readUInt16BE(0)
  switch (t) {
    case Info.EXPORT:
      return data.length === 12 ? {type: Info.EXPORT, size: data.readBigUInt64BE(2), flags: data.readUInt16BE(10)} : undefined
    case Info.NAME:
      return {type: Info.NAME, name: data.toString('utf8', 2)}
    case Info.DESCRIPTION:
      return {type: Info.DESCRIPTION, description: data.toString('utf8', 2)}
    case Info.BLOCK_SIZE:
      return data.length === 14 ? {type: Info.BLOCK_SIZE, min: data.readUInt32BE(2), preferred: data.readUInt32BE(6), max: data.readUInt32BE(10)} : undefined
    default:
      return {type: 'unknown', info: t}
  }
}

/** The reply to NBD_OPT_EXPORT_NAME: size, transmission flags, 124 zeroes unless NO_ZEROES. */
export function encodeExportNameReply(size: number, flags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(EXPORT_NAME_REPLY_SIZE + (noZeroes ? 0 : EXPORT_NAME_ZERO_PAD))
  b.writeBigUInt64BE(BigInt(size), 0)
  b.writeUInt16BE(flags, 8)
  return b
}

export function decodeExportNameReply(b: Buffer): {size: bigint; flags: number} | undefined {
  if (b.length < EXPORT_NAME_REPLY_SIZE) return undefined
  return {size: b.readBigUInt64BE(0), flags: b.readUInt16BE(8)}
}

// ---------------------------------------------------------------------------------------
// Transmission: requests and simple replies

export interface Request {
  flags: number
  type: number
  cookie: bigint
  offset: bigint
  length: number
}

export function encodeRequest(r: Request): Buffer {
  const b = Buffer.alloc(REQUEST_SIZE)
  b.writeUInt32BE(REQUEST_MAGIC, 0)
  b.writeUInt16BE(r.flags, 4)
  b.writeUInt16BE(r.type, 6)
  b.writeBigUInt64BE(r.cookie, 8)
  b.writeBigUInt64BE(r.offset, 16)
  b.writeUInt32BE(r.length, 24)
  return b
}

/** A request header (28 bytes); undefined when the magic is wrong. */
export function decodeRequest(b: Buffer): Request | undefined {
  if (b.length < REQUEST_SIZE || b.readUInt32BE(0) !== REQUEST_MAGIC) return undefined
  return {flags: b.readUInt16BE(4), type: b.readUInt16BE(6), cookie: b.readBigUInt64BE(8), offset: b.readBigUInt64BE(16), length: b.readUInt32BE(24)}
}

/** A request header without bigints: for the server, which only echoes the cookie. */
export interface RequestHeader {
  flags: number
  type: number
  /** The cookie (handle) as two 32-bit halves, echoed verbatim in the reply. */
  cookieHi: number
  cookieLo: number
  /** The offset; -1 when it is 2^53 or more (past the end of any export). */
  offset: number
  length: number
}

const TWO32 = 0x1_0000_0000
/** The high half of an offset below 2^53 (Number.MAX_SAFE_INTEGER + 1). */
const SAFE_HI_LIMIT = 0x20_0000

/**
 * Read a request header at `pos` (28 bytes must be there) into `into` (a fresh object when
 * omitted); undefined when the magic is wrong.
 */
export function readRequestHeader<T extends RequestHeader>(b: Buffer, pos: number, into: T): T | undefined
export function readRequestHeader(b: Buffer, pos: number): RequestHeader | undefined
export function readRequestHeader(b: Buffer, pos: number, into?: RequestHeader): RequestHeader | undefined {
  if (b.readUInt32BE(pos) !== REQUEST_MAGIC) return undefined
  const r: RequestHeader = into ?? {flags: 0, type: 0, cookieHi: 0, cookieLo: 0, offset: 0, length: 0}
  const offHi = b.readUInt32BE(pos + 16)
  r.flags = b.readUInt16BE(pos + 4)
  r.type = b.readUInt16BE(pos + 6)
  r.cookieHi = b.readUInt32BE(pos + 8)
  r.cookieLo = b.readUInt32BE(pos + 12)
  r.offset = offHi < SAFE_HI_LIMIT ? offHi * TWO32 + b.readUInt32BE(pos + 20) : -1
  r.length = b.readUInt32BE(pos + 24)
  return r
}

/** Write a simple reply header (16 bytes) at `pos`. */
export function writeSimpleReplyHeader(b: Buffer, pos: number, error: number, cookieHi: number, cookieLo: number): void {
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, pos)
  b.writeUInt32BE(error >>> 0, pos + 4)
  b.writeUInt32BE(cookieHi >>> 0, pos + 8)
  b.writeUInt32BE(cookieLo >>> 0, pos + 12)
}

export function encodeSimpleReply(error: number, cookie: bigint): Buffer {
  const b = Buffer.alloc(SIMPLE_REPLY_SIZE)
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0)
  b.writeUInt32BE(error >>> 0, 4)
  b.writeBigUInt64BE(cookie, 8)
  return b
}

/** A simple reply header (16 bytes at `pos`); undefined when the magic is wrong. */
export function decodeSimpleReply(b: Buffer, pos = 0): {error: number; cookie: bigint} | undefined {
  if (b.length - pos < SIMPLE_REPLY_SIZE || b.readUInt32BE(pos) !== SIMPLE_REPLY_MAGIC) return undefined
  return {error: b.readUInt32BE(pos + 4), cookie: b.readBigUInt64BE(pos + 8)}
}

// ---------------------------------------------------------------------------------------
// Structured replies (NBD_OPT_STRUCTURED_REPLY) and meta contexts (block status)

/** Structured reply chunk header: magic, flags (16), type (16), cookie (64), length (32). */
export const STRUCTURED_REPLY_SIZE = 20
export const ReplyFlag = {DONE: 1} as const
export const ReplyType = {NONE: 0, OFFSET_DATA: 1, OFFSET_HOLE: 2, BLOCK_STATUS: 5, ERROR: 0x8001, ERROR_OFFSET: 0x8002} as const
/** base:allocation status flags. */
export const StateFlag = {HOLE: 1, ZERO: 2} as const
/** NBD_OPT_EXTENDED_HEADERS' wider request magic (this server refuses extended headers). */
export const EXTENDED_REQUEST_MAGIC = 0x21e41c71

/** Write a structured reply chunk header (20 bytes) at `pos`. */
export function writeStructuredHeader(b: Buffer, pos: number, flags: number, type: number, cookieHi: number, cookieLo: number, length: number): void {
  b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, pos)
  b.writeUInt16BE(flags, pos + 4)
  b.writeUInt16BE(type, pos + 6)
  b.writeUInt32BE(cookieHi >>> 0, pos + 8)
  b.writeUInt32BE(cookieLo >>> 0, pos + 12)
  b.writeUInt32BE(length >>> 0, pos + 16)
}

/** Bytes of an OFFSET_DATA chunk before its data: header and the 64-bit offset. */
export const OFFSET_DATA_HEAD = STRUCTURED_REPLY_SIZE + 8
/** Bytes of an ERROR chunk without a message: header, error (32), message length (16). */
export const ERROR_CHUNK_SIZE = STRUCTURED_REPLY_SIZE + 6

/** Write the head of a final OFFSET_DATA chunk (the `length` data bytes follow it) at `pos`. */
export function writeOffsetDataHead(b: Buffer, pos: number, cookieHi: number, cookieLo: number, offset: number, length: number): void {
  writeStructuredHeader(b, pos, ReplyFlag.DONE, ReplyType.OFFSET_DATA, cookieHi, cookieLo, 8 + length)
  b.writeUInt32BE(Math.floor(offset / TWO32), pos + STRUCTURED_REPLY_SIZE)
  b.writeUInt32BE(offset >>> 0, pos + STRUCTURED_REPLY_SIZE + 4)
}

/** Write a final ERROR chunk with an empty message (ERROR_CHUNK_SIZE bytes) at `pos`. */
export function writeErrorChunk(b: Buffer, pos: number, error: number, cookieHi: number, cookieLo: number): void {
  writeStructuredHeader(b, pos, ReplyFlag.DONE, ReplyType.ERROR, cookieHi, cookieLo, 6)
  b.writeUInt32BE(error >>> 0, pos + STRUCTURED_REPLY_SIZE)
  b.writeUInt16BE(0, pos + STRUCTURED_REPLY_SIZE + 4)
}

/** One block status descriptor: a run's length and its status flags. */
export interface StatusRun {
  length: number
  flags: number
}

/**
 * The chunks answering NBD_CMD_BLOCK_STATUS: one NBD_REPLY_TYPE_BLOCK_STATUS chunk per
 * context (id, then length/flags pairs), the last one flagged DONE.
 */
export function encodeBlockStatusReply(cookieHi: number, cookieLo: number, chunks: ReadonlyArray<{id: number; runs: readonly StatusRun[]}>): Buffer {
  let size = 0
  for (const c of chunks) size += STRUCTURED_REPLY_SIZE + 4 + 8 * c.runs.length
  const b = Buffer.allocUnsafe(size)
  let pos = 0
  chunks.forEach((c, i) => {
    const len = 4 + 8 * c.runs.length
    writeStructuredHeader(b, pos, i === chunks.length - 1 ? ReplyFlag.DONE : 0, ReplyType.BLOCK_STATUS, cookieHi, cookieLo, len)
    pos += STRUCTURED_REPLY_SIZE
    b.writeUInt32BE(c.id >>> 0, pos)
    pos += 4
    for (const r of c.runs) {
      b.writeUInt32BE(r.length >>> 0, pos)
      b.writeUInt32BE(r.flags >>> 0, pos + 4)
      pos += 8
    }
  })
  return b
}

/** A structured reply chunk header (20 bytes at `pos`); undefined when the magic is wrong. */
export function decodeStructuredHeader(b: Buffer, pos = 0): {flags: number; type: number; cookie: bigint; length: number} | undefined {
  if (b.length - pos < STRUCTURED_REPLY_SIZE || b.readUInt32BE(pos) !== STRUCTURED_REPLY_MAGIC) return undefined
  return {flags: b.readUInt16BE(pos + 4), type: b.readUInt16BE(pos + 6), cookie: b.readBigUInt64BE(pos + 8), length: b.readUInt32BE(pos + 16)}
}

/**
 * The data of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT: export name, then the
 * queries. Undefined unless the lengths add up exactly.
 */
export function decodeMetaContextRequest(data: Buffer): {exportName: string; queries: string[]} | undefined {
  if (data.length < 8) return undefined
  const nameLen = data.readUInt32BE(0)
  if (nameLen > data.length - 8) return undefined
  const exportName = data.toString('utf8', 4, 4 + nameLen)
  let pos = 4 + nameLen
  const n = data.readUInt32BE(pos)
  pos += 4
  const queries: string[] = []
  for (let i = 0; i < n; i++) {
    if (data.length - pos < 4) return undefined
    const len = data.readUInt32BE(pos)
    pos += 4
    if (len > data.length - pos) return undefined
    queries.push(data.toString('utf8', pos, pos + len))
    pos += len
  }
  return pos === data.length ? {exportName, queries} : undefined
}

export function encodeMetaContextRequest(exportName: string, queries: readonly string[]): Buffer {
  const parts: Buffer[] = []
  const n = Buffer.from(exportName, 'utf8')
  const head = Buffer.alloc(4)
  head.writeUInt32BE(n.length, 0)
  parts.push(head, n)
  const count = Buffer.alloc(4)
  count.writeUInt32BE(queries.length, 0)
  parts.push(count)
  for (const q of queries) {
    const qb = Buffer.from(q, 'utf8')
    const l = Buffer.alloc(4)
    l.writeUInt32BE(qb.length, 0)
    parts.push(l, qb)
  }
  return Buffer.concat(parts)
}

/** NBD_REP_META_CONTEXT data: the context id, then its name. */
export function encodeMetaContextReply(id: number, name: string): Buffer {
  const n = Buffer.from(name, 'utf8')
  const b = Buffer.alloc(4 + n.length)
  b.writeUInt32BE(id >>> 0, 0)
  n.copy(b, 4)
  return b
}

export function decodeMetaContextReply(data: Buffer): {id: number; name: string} | undefined {
  if (data.length < 4) return undefined
  return {id: data.readUInt32BE(0), name: data.toString('utf8', 4)}
}
