/**
 * The NBD codec (src/nbd/protocol.ts) against the wire format of NetworkBlockDevice/nbd
 * doc/proto.md: every encoder round-trips through its decoder, and the fixed layouts put
 * each field at the offset the spec gives.
 */
import assert from 'node:assert/strict'
import {describe, test} from 'node:test'
import fc from 'fast-check'
import {VolumeIoError} from '../../src/errors/errors.js'
import {ByteQueue} from '../../src/nbd/ByteQueue.js'
import {
  BLOCK_MAX,
  BLOCK_MIN,
  BLOCK_PREFERRED,
  Errno,
  EXPORT_NAME_ZERO_PAD,
  IHAVEOPT,
  Info,
  NBDMAGIC,
  OPT_REPLY_MAGIC,
  Opt,
  REQUEST_MAGIC,
  REQUEST_SIZE,
  Rep,
  SIMPLE_REPLY_MAGIC,
  decodeExportNameReply,
  decodeGoData,
  decodeInfo,
  decodeOptionHeader,
  decodeOptionReplyHeader,
  decodeRequest,
  decodeServerGreeting,
  decodeServerReplyData,
  decodeSimpleReply,
  encodeClientFlags,
  encodeExportNameReply,
  encodeGoData,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoText,
  encodeOption,
  encodeOptionReply,
  encodeRequest,
  encodeServerGreeting,
  encodeServerReplyData,
  encodeSimpleReply,
  errnoName,
  isRepError,
  nbdErrnoOf,
  readRequestHeader,
  writeSimpleReplyHeader,
} from '../../src/nbd/protocol.js'

const u64 = fc.bigInt({min: 0n, max: (1n << 64n) - 1n})
const u32 = fc.integer({min: 0, max: 0xffffffff})
const u16 = fc.integer({min: 0, max: 0xffff})

describe('NBD protocol codec', () => {
  test('the server greeting is NBDMAGIC, IHAVEOPT, FIXED_NEWSTYLE|NO_ZEROES', () => {
    const g = encodeServerGreeting()
    assert.equal(g.length, 18)
    assert.equal(g.readBigUInt64BE(0), NBDMAGIC)
    assert.equal(g.toString('ascii', 0, 8), 'NBDMAGIC')
    assert.equal(g.readBigUInt64BE(8), IHAVEOPT)
    assert.equal(g.toString('ascii', 8, 16), 'IHAVEOPT')
    assert.equal(g.readUInt16BE(16), 3)
    assert.deepEqual(decodeServerGreeting(g), {flags: 3})
    const old = Buffer.from(g)
    old.write('\x00\x00\x42\x02\x81\x86\x12\x53', 8, 'latin1') // oldstyle magic
    assert.equal(decodeServerGreeting(old), undefined)
    assert.equal(decodeServerGreeting(g.subarray(0, 17)), undefined)
    assert.deepEqual([...encodeClientFlags(3)], [0, 0, 0, 3])
  })

  test('a request round-trips for any field values', () => {
    fc.assert(
      fc.property(u16, u16, u64, u64, u32, (flags, type, cookie, offset, length) => {
        const b = encodeRequest({flags, type, cookie, offset, length})
        assert.equal(b.length, REQUEST_SIZE)
        assert.equal(b.readUInt32BE(0), REQUEST_MAGIC)
        assert.deepEqual(decodeRequest(b), {flags, type, cookie, offset, length})
      }),
    )
  })

  test('a request with a wrong magic decodes to undefined', () => {
    const b = encodeRequest({flags: 0, type: 0, cookie: 1n, offset: 0n, length: 512})
    b.writeUInt32BE(0x25609514, 0)
    assert.equal(decodeRequest(b), undefined)
  })

  test("the server's header reader agrees with decodeRequest, without bigints; offsets from 2^53 read as -1", () => {
    fc.assert(
      fc.property(u16, u16, u64, u64, u32, fc.nat({max: 40}), (flags, type, cookie, offset, length, at) => {
        const b = Buffer.concat([Buffer.alloc(at, 0xaa), encodeRequest({flags, type, cookie, offset, length})])
        const h = readRequestHeader(b, at)
        assert.ok(h)
        assert.deepEqual([h.flags, h.type, h.length], [flags, type, length])
        assert.equal((BigInt(h.cookieHi) << 32n) | BigInt(h.cookieLo), cookie)
        assert.equal(h.offset, offset < 2n ** 53n ? Number(offset) : -1)
        // The reply echoes the cookie's two halves verbatim.
        const r = Buffer.alloc(16 + at)
        writeSimpleReplyHeader(r, at, 22, h.cookieHi, h.cookieLo)
        assert.deepEqual(decodeSimpleReply(r, at), {error: 22, cookie})
      }),
    )
    for (const [offset, want] of [
      [2n ** 53n - 1n, Number.MAX_SAFE_INTEGER],
      [2n ** 53n, -1],
      [2n ** 64n - 1n, -1],
      [2n ** 32n + 5n, 2 ** 32 + 5],
    ] as const) {
      assert.equal(readRequestHeader(encodeRequest({flags: 0, type: 0, cookie: 0n, offset, length: 0}), 0)?.offset, want)
    }
    const bad = encodeRequest({flags: 0, type: 0, cookie: 0n, offset: 0n, length: 0})
    bad[3] ^= 0x10
    assert.equal(readRequestHeader(bad, 0), undefined)
    // Into a caller's object: the same object back.
    const into = {flags: 9, type: 9, cookieHi: 9, cookieLo: 9, offset: 9, length: 9, extra: 'kept'}
    assert.equal(readRequestHeader(encodeRequest({flags: 1, type: 1, cookie: 5n, offset: 512n, length: 4096}), 0, into), into)
    assert.deepEqual(into, {flags: 1, type: 1, cookieHi: 0, cookieLo: 5, offset: 512, length: 4096, extra: 'kept'})
  })

  test('a simple reply round-trips; its layout is magic, error, cookie', () => {
    fc.assert(
      fc.property(u32, u64, (error, cookie) => {
        const b = encodeSimpleReply(error, cookie)
        assert.equal(b.length, 16)
        assert.equal(b.readUInt32BE(0), SIMPLE_REPLY_MAGIC)
        assert.deepEqual(decodeSimpleReply(b), {error, cookie})
      }),
    )
    const bad = encodeSimpleReply(0, 1n)
    bad[0] ^= 1
    assert.equal(decodeSimpleReply(bad), undefined)
  })

  test('OPT_GO / OPT_INFO data round-trips (name and requested infos)', () => {
    fc.assert(
      fc.property(fc.string({maxLength: 100}), fc.array(u16, {maxLength: 8}), (name, infos) => {
        assert.deepEqual(decodeGoData(encodeGoData(name, infos)), {name, infos})
      }),
    )
  })

  test('OPT_GO asking for NAME, DESCRIPTION and BLOCK_SIZE, as libnbd sends it, parses', () => {
    // Bytes as on the wire: name length 4, "disk", 3 info requests: 1, 2, 3.
    const wire = Buffer.from([0, 0, 0, 4, 0x64, 0x69, 0x73, 0x6b, 0, 3, 0, 1, 0, 2, 0, 3])
    assert.deepEqual(decodeGoData(wire), {name: 'disk', infos: [Info.NAME, Info.DESCRIPTION, Info.BLOCK_SIZE]})
    assert.deepEqual(encodeGoData('disk', [1, 2, 3]), wire)
    // The default export, no info requests (what qemu sends when it needs nothing extra).
    assert.deepEqual(decodeGoData(Buffer.from([0, 0, 0, 0, 0, 0])), {name: '', infos: []})
    // The whole option as a server reads it: header, then exactly that data.
    const opt = encodeOption(Opt.GO, wire)
    assert.deepEqual(decodeOptionHeader(opt), {option: Opt.GO, length: wire.length})
    assert.deepEqual(decodeGoData(opt.subarray(16)), {name: 'disk', infos: [1, 2, 3]})
  })

  test('malformed OPT_GO data is refused, never read past its end', () => {
    assert.equal(decodeGoData(Buffer.alloc(0)), undefined)
    assert.equal(decodeGoData(Buffer.alloc(5)), undefined)
    const d = encodeGoData('disk', [Info.NAME])
    d.writeUInt32BE(1000, 0) // name longer than the data
    assert.equal(decodeGoData(d), undefined)
    const e = encodeGoData('disk', [Info.NAME, Info.BLOCK_SIZE])
    assert.equal(decodeGoData(e.subarray(0, e.length - 1)), undefined) // info count says 2, one half-present
    assert.equal(decodeGoData(Buffer.concat([encodeGoData('', []), Buffer.alloc(1)])), undefined) // trailing byte
    fc.assert(
      fc.property(fc.uint8Array({maxLength: 64}), (bytes) => {
        const r = decodeGoData(Buffer.from(bytes))
        if (r) assert.deepEqual(decodeGoData(encodeGoData(r.name, r.infos)), r)
      }),
    )
  })

  test('an option (client → server) has IHAVEOPT, option, length, data', () => {
    fc.assert(
      fc.property(u32, fc.uint8Array({maxLength: 64}), (option, data) => {
        const b = encodeOption(option, Buffer.from(data))
        assert.equal(b.readBigUInt64BE(0), IHAVEOPT)
        assert.equal(b.readUInt32BE(8), option)
        assert.equal(b.readUInt32BE(12), data.length)
        assert.deepEqual(new Uint8Array(b.subarray(16)), data)
      }),
    )
  })

  test('an option header decodes; a wrong magic or a short buffer does not', () => {
    fc.assert(
      fc.property(u32, fc.uint8Array({maxLength: 32}), (option, data) => {
        assert.deepEqual(decodeOptionHeader(encodeOption(option, Buffer.from(data))), {option, length: data.length})
      }),
    )
    const b = encodeOption(Opt.LIST)
    assert.equal(decodeOptionHeader(b.subarray(0, 15)), undefined)
    b[0] ^= 1
    assert.equal(decodeOptionHeader(b), undefined)
  })

  test('option replies round-trip; an ACK carries no data', () => {
    fc.assert(
      fc.property(u32, u32, fc.uint8Array({maxLength: 32}), (option, type, data) => {
        const b = encodeOptionReply(option, type, Buffer.from(data))
        assert.deepEqual(decodeOptionReplyHeader(b), {option, type, length: data.length})
        assert.deepEqual(new Uint8Array(b.subarray(20)), data)
      }),
    )
    assert.equal(encodeOptionReply(Opt.GO, Rep.ACK).length, 20)
    assert.equal(isRepError(Rep.ERR_UNSUP), true)
    assert.equal(isRepError(Rep.ACK), false)
    assert.equal(decodeOptionReplyHeader(encodeOption(Opt.GO)), undefined)
  })

  test('NBD_REP_SERVER data: name, then details', () => {
    fc.assert(
      fc.property(fc.string({maxLength: 40}), fc.string({maxLength: 40}), (name, details) => {
        assert.deepEqual(decodeServerReplyData(encodeServerReplyData(name, details)), {name, details})
      }),
    )
    assert.equal(decodeServerReplyData(Buffer.from([0, 0, 0, 9, 1])), undefined)
  })

  test('NBD_REP_INFO payloads decode to what was encoded', () => {
    assert.deepEqual(decodeInfo(encodeInfoExport(12345, 0x1ed)), {type: Info.EXPORT, size: 12345n, flags: 0x1ed})
    assert.deepEqual(decodeInfo(encodeInfoBlockSize()), {type: Info.BLOCK_SIZE, min: 512, preferred: 4096, max: 32 * 1024 * 1024})
    assert.deepEqual(decodeInfo(encodeInfoText(Info.NAME, 'disk')), {type: Info.NAME, name: 'disk'})
    assert.deepEqual(decodeInfo(encodeInfoText(Info.DESCRIPTION, 'd')), {type: Info.DESCRIPTION, description: 'd'})
    assert.deepEqual(decodeInfo(Buffer.from([0, 9, 1])), {type: 'unknown', info: 9})
    assert.equal(decodeInfo(encodeInfoExport(1, 1).subarray(0, 11)), undefined)
    assert.equal(decodeInfo(Buffer.from([0])), undefined)
  })

  test('the EXPORT_NAME reply: size, flags, and 124 zeros unless NO_ZEROES', () => {
    const a = encodeExportNameReply(1 << 20, 0x10d, true)
    assert.equal(a.length, 10)
    assert.deepEqual(decodeExportNameReply(a), {size: 1n << 20n, flags: 0x10d})
    const b = encodeExportNameReply(1 << 20, 0x10d, false)
    assert.equal(b.length, 10 + EXPORT_NAME_ZERO_PAD)
    assert.ok(b.subarray(10).every((x) => x === 0))
  })

  test('backend errors map to NBD errno: .errno first, then .code; anything else is EIO', () => {
    assert.equal(nbdErrnoOf(new VolumeIoError('full', 'ENOSPC')), Errno.ENOSPC)
    assert.equal(nbdErrnoOf(Object.assign(new Error('x'), {code: 'ENOSPC'})), Errno.ENOSPC)
    assert.equal(nbdErrnoOf(Object.assign(new Error('x'), {code: 'EDQUOT'})), Errno.ENOSPC)
    assert.equal(nbdErrnoOf(Object.assign(new Error('x'), {code: 'EINVAL'})), Errno.EINVAL)
    assert.equal(nbdErrnoOf(Object.assign(new Error('x'), {code: 'EPERM'})), Errno.EPERM)
    assert.equal(nbdErrnoOf(Object.assign(new Error('x'), {code: 'EROFS'})), Errno.EPERM)
    assert.equal(nbdErrnoOf(Object.assign(new Error('x'), {code: 'EIO', errno: -5})), Errno.EIO) // Node's numeric errno is ignored
    assert.equal(nbdErrnoOf(Object.assign(new Error('x'), {code: 'ENOSPC', errno: -28})), Errno.ENOSPC)
    assert.equal(nbdErrnoOf(Object.assign(new Error('x'), {code: 'EBADF'})), Errno.EIO)
    assert.equal(nbdErrnoOf(Object.assign(new Error('x'), {code: 'toString'})), Errno.EIO) // no prototype lookups
    assert.equal(nbdErrnoOf(new Error('plain')), Errno.EIO)
    assert.equal(nbdErrnoOf('a string'), Errno.EIO)
    assert.equal(nbdErrnoOf(undefined), Errno.EIO)
    assert.equal(errnoName(Errno.ENOSPC), 'ENOSPC')
    assert.equal(errnoName(99), 'errno 99')
  })

  test('an option reply has the reply magic, option, type (errors with the high bit), length, data', () => {
    const b = encodeOptionReply(Opt.GO, Rep.ERR_UNKNOWN, Buffer.from('x'))
    assert.equal(b.readBigUInt64BE(0), OPT_REPLY_MAGIC)
    assert.equal(b.readUInt32BE(8), Opt.GO)
    assert.equal(b.readUInt32BE(12), 0x80000006)
    assert.equal(b.readUInt32BE(16), 1)
    assert.equal(b.toString('utf8', 20), 'x')
    const ack = encodeOptionReply(Opt.STRUCTURED_REPLY, Rep.ERR_UNSUP)
    assert.equal(ack.length, 20)
    assert.equal(ack.readUInt32BE(16), 0)
  })

  test('NBD_INFO_EXPORT: type 0, size u64, transmission flags u16 (12 bytes)', () => {
    fc.assert(
      fc.property(fc.integer({min: 0, max: Number.MAX_SAFE_INTEGER}), u16, (size, flags) => {
        const b = encodeInfoExport(size, flags)
        assert.equal(b.length, 12)
        assert.equal(b.readUInt16BE(0), Info.EXPORT)
        assert.equal(b.readBigUInt64BE(2), BigInt(size))
        assert.equal(b.readUInt16BE(10), flags)
      }),
    )
  })

  test('NBD_INFO_BLOCK_SIZE advertises 512 / 4096 / 32 MiB by default', () => {
    const b = encodeInfoBlockSize()
    assert.equal(b.length, 14)
    assert.equal(b.readUInt16BE(0), Info.BLOCK_SIZE)
    assert.deepEqual([b.readUInt32BE(2), b.readUInt32BE(6), b.readUInt32BE(10)], [BLOCK_MIN, BLOCK_PREFERRED, BLOCK_MAX])
    assert.deepEqual([BLOCK_MIN, BLOCK_PREFERRED, BLOCK_MAX], [512, 4096, 32 * 1024 * 1024])
  })

  test('NBD_INFO_NAME / DESCRIPTION carry UTF-8 text after the type', () => {
    const b = encodeInfoText(Info.DESCRIPTION, 'clonectl group ü')
    assert.equal(b.readUInt16BE(0), Info.DESCRIPTION)
    assert.equal(b.toString('utf8', 2), 'clonectl group ü')
  })
})

describe("ByteQueue (the receive buffer)", () => {
  test('header, take and skip across arbitrary chunk boundaries return the bytes in order', () => {
    fc.assert(
      fc.property(
        fc.array(fc.uint8Array({maxLength: 50}), {maxLength: 20}),
        fc.array(fc.tuple(fc.constantFrom('header', 'take', 'skip'), fc.integer({min: 0, max: 64})), {maxLength: 40}),
        (chunks, ops) => {
          const q = new ByteQueue()
          const all = Buffer.concat(chunks.map((c) => Buffer.from(c)))
          for (const c of chunks) q.push(Buffer.from(c))
          let pos = 0
          for (const [op, n0] of ops) {
            const n = Math.min(n0, q.length)
            if (op === 'header') {
              if (n === 0) continue
              const b = q.header(n)
              assert.deepEqual(b.subarray(q.pos, q.pos + n), all.subarray(pos, pos + n))
            } else if (op === 'take') assert.deepEqual(q.take(n), all.subarray(pos, pos + n))
            else q.skip(n)
            pos += n
            assert.equal(q.length, all.length - pos)
          }
          assert.deepEqual(q.take(q.length), all.subarray(pos))
        },
      ),
    )
  })

  test('a payload inside one chunk is a view of it, not a copy; one across chunks is one copy', () => {
    const q = new ByteQueue()
    const c = Buffer.alloc(10) // not from the shared pool, so .buffer identifies it
    c.write('0123456789')
    q.push(c)
    const v = q.take(4)
    assert.equal(v.buffer, c.buffer)
    q.push(Buffer.from('abc'))
    const w = q.take(8)
    assert.equal(w.toString(), '456789ab')
    assert.notEqual(w.buffer, c.buffer)
  })
})

describe('ByteQueue', () => {
  test('take and skip across arbitrary chunk boundaries return the bytes in order', () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({maxLength: 50}), {maxLength: 20}), fc.array(fc.tuple(fc.boolean(), fc.integer({min: 0, max: 60})), {maxLength: 40}), (chunks, ops) => {
        const q = new ByteQueue()
        const all = Buffer.concat(chunks.map((c) => Buffer.from(c)))
        for (const c of chunks) q.push(Buffer.from(c))
        let pos = 0
        for (const [isTake, n0] of ops) {
          const n = Math.min(n0, q.length)
          if (isTake) assert.deepEqual(q.take(n), all.subarray(pos, pos + n))
          else q.skip(n)
          pos += n
          assert.equal(q.length, all.length - pos)
        }
        assert.deepEqual(q.take(q.length), all.subarray(pos))
      }),
    )
  })
})
