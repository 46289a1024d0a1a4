/**
 * NBD protocol constants and codec (NetworkBlockDevice/nbd doc/proto.md): fixed newstyle
 * handshake, option haggling, simple replies. One codec for both roles, server and client.
 */
export const NBDMAGIC = 0x4e42444d41474943n
export const IHAVEOPT = 0x49484156454f5054n
export const OPT_REPLY_MAGIC = 0x3e889045565a9n
export const REQUEST_MAGIC = 0x25609513
export const SIMPLE_REPLY_MAGIC = 0x67446698

export const HandshakeFlag = {FIXED_NEWSTYLE: 1, NO_ZEROES: 2} as const
export const ClientFlag = {FIXED_NEWSTYLE: 1, NO_ZEROES: 2} as const

export const Opt = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const

export const Rep = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
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

export const Info = {EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3} as const

export const TxFlag = {
  HAS_FLAGS: 1,
  READ_ONLY: 2,
  SEND_FLUSH: 4,
  SEND_FUA: 8,
  ROTATIONAL: 16,
  SEND_TRIM: 32,
  SEND_WRITE_ZEROES: 64,
  SEND_DF: 128,
  CAN_MULTI_CONN: 256,
} as const

export const Cmd = {READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7} as const
export const CmdFlag = {FUA: 1, NO_HOLE: 2, DF: 4, REQ_ONE: 8, FAST_ZERO: 16} as const

export const Errno = {OK: 0, EPERM: 1, EIO: 5, ENOMEM: 12, EINVAL: 22, ENOSPC: 28, EOVERFLOW: 75, ENOTSUP: 95, ESHUTDOWN: 108} as const
export type ErrnoName = keyof typeof Errno

/** Advertised block sizes: minimum, preferred, maximum (DESIGN §5). */
export const BLOCK_MIN = 512
export const BLOCK_PREFERRED = 4096
export const BLOCK_MAX = 32 * 1024 * 1024

export const REQUEST_SIZE = 28
export const OPTION_HEADER_SIZE = 16

export interface Request {
  flags: number
  type: number
  cookie: bigint
  offset: bigint
  length: number
}

export function encodeServerGreeting(): Buffer {
  const b = Buffer.alloc(18)
  b.writeBigUInt64BE(NBDMAGIC, 0)
  b.writeBigUInt64BE(IHAVEOPT, 8)
  b.writeUInt16BE(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES, 16)
  return b
}

export function encodeOptionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(20 + data.length)
  b.writeBigUInt64BE(OPT_REPLY_MAGIC, 0)
  b.writeUInt32BE(option, 8)
  b.writeUInt32BE(type >>> 0, 12)
  b.writeUInt32BE(data.length, 16)
  data.copy(b, 20)
  return b
}

export function encodeInfoExport(size: number, flags: number): Buffer {
  const b = Buffer.alloc(12)
  b.writeUInt16BE(Info.EXPORT, 0)
  b.writeBigUInt64BE(BigInt(size), 2)
  b.writeUInt16BE(flags, 10)
  return b
}

export function encodeInfoBlockSize(min = BLOCK_MIN, preferred = BLOCK_PREFERRED, max = BLOCK_MAX): Buffer {
  const b = Buffer.alloc(14)
  b.writeUInt16BE(Info.BLOCK_SIZE, 0)
  b.writeUInt32BE(min, 2)
  b.writeUInt32BE(preferred, 6)
  b.writeUInt32BE(max, 10)
  return b
}

export function encodeInfoText(type: number, text: string): Buffer {
  const t = Buffer.from(text, 'utf8')
  const b = Buffer.alloc(2 + t.length)
  b.writeUInt16BE(type, 0)
  t.copy(b, 2)
  return b
}

/** The data of NBD_OPT_INFO / NBD_OPT_GO: export name and requested info types. */
export function decodeGoData(data: Buffer): {name: string; infos: number[]} | undefined {
  if (data.length < 6) return undefined
  const nameLen = data.readUInt32BE(0)
  if (4 + nameLen + 2 > data.length) return undefined
  const name = data.toString('utf8', 4, 4 + nameLen)
  const n = data.readUInt16BE(4 + nameLen)
  if (4 + nameLen + 2 + n * 2 !== data.length) return undefined
  const infos: number[] = []
  for (let i = 0; i < n; i++) infos.push(data.readUInt16BE(4 + nameLen + 2 + i * 2))
  return {name, infos}
}

export function encodeGoData(name: string, infos: number[] = []): Buffer {
  const n = Buffer.from(name, 'utf8')
  const b = Buffer.alloc(4 + n.length + 2 + infos.length * 2)
  b.writeUInt32BE(n.length, 0)
  n.copy(b, 4)
  b.writeUInt16BE(infos.length, 4 + n.length)
  infos.forEach((t, i) => b.writeUInt16BE(t, 4 + n.length + 2 + i * 2))
  return b
}

export function encodeOption(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(16 + data.length)
  b.writeBigUInt64BE(IHAVEOPT, 0)
  b.writeUInt32BE(option, 8)
  b.writeUInt32BE(data.length, 12)
  data.copy(b, 16)
  return b
}

export function decodeRequest(b: Buffer): Request | undefined {
  if (b.readUInt32BE(0) !== REQUEST_MAGIC) return undefined
  return {flags: b.readUInt16BE(4), type: b.readUInt16BE(6), cookie: b.readBigUInt64BE(8), offset: b.readBigUInt64BE(16), length: b.readUInt32BE(24)}
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

export function encodeSimpleReply(error: number, cookie: bigint): Buffer {
  const b = Buffer.alloc(16)
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0)
  b.writeUInt32BE(error, 4)
  b.writeBigUInt64BE(cookie, 8)
  return b
}

export function decodeSimpleReply(b: Buffer): {error: number; cookie: bigint} | undefined {
  if (b.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) return undefined
  return {error: b.readUInt32BE(4), cookie: b.readBigUInt64BE(8)}
}
