/**
 * The NBD client's block status (remote clones skip holes too): NbdClient negotiates
 * structured replies and base:allocation, reads through structured chunks, and extents()
 * answers the remote's data / zero / hole runs.
 *
 * - qemu-nbd over a sparse file: extents() finds exactly its data runs; reads (structured
 *   chunks, holes included) return the file's bytes; NbdVolume.extents() the same.
 * - clonectl's own NbdServer with a scripted source: HOLE without ZERO is data (nothing
 *   promises zeros), ZERO alone is `zero`; a short answer is asked again from where it
 *   ended; an unaligned range is widened to the block size and clipped back.
 * - a server without block status: one data run, reads unchanged.
 * - a scripted server: READ chunks out of order with a hole are assembled exactly; data
 *   outside the request, DONE before every byte, a simple reply to READ, a chunk type
 *   that does not belong are protocol errors (never wrong data); an ERROR chunk fails
 *   only its request.
 */
import assert from 'node:assert/strict'
import {type ChildProcess, spawn} from 'node:child_process'
import {randomBytes} from 'node:crypto'
import * as fsp from 'node:fs/promises'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import {type MetaContextSource, extentRuns} from '../../src/nbd/BlockStatus.js'
import type {ExportBackend} from '../../src/nbd/ExportBackend.js'
import {NbdClient} from '../../src/nbd/NbdClient.js'
import {NbdServer} from '../../src/nbd/NbdServer.js'
import {createServer} from 'node:net'
import {RemoteError} from '../../src/errors/errors.js'
import {
  Errno,
  Opt,
  Rep,
  ReplyFlag,
  ReplyType,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_MAGIC,
  type StatusRun,
  TxFlag,
  encodeInfoExport,
  encodeOptionReply,
  encodeServerGreeting,
} from '../../src/nbd/protocol.js'
import {NbdVolume} from '../../src/volume/NbdVolume.js'
import {KiB, MiB, has, nbdUri, needTool, sleep, socketLive, tempDir} from '../helpers/serve.js'

const needQemuNbd = has('qemu-nbd', '--version') ? false : 'qemu-nbd (qemu-utils) is not installed'
let dir: string
const children = new Set<ChildProcess>()

before(async () => {
  dir = await tempDir('nbdclientstatus')
})
after(async () => {
  for (const c of children) c.kill('SIGKILL')
  await fsp.rm(dir, {recursive: true, force: true})
})

/** qemu-nbd serving `path` persistently on a new socket; resolves once it accepts. */
async function qemuNbd(path: string): Promise<string> {
  const sock = join(dir, `q${children.size}.sock`)
  const proc = spawn('qemu-nbd', ['-f', 'raw', '-t', '-k', sock, '-x', 'disk', path], {stdio: 'ignore'})
  children.add(proc)
  let exited = false
  proc.on('exit', () => (exited = true))
  const t0 = Date.now()
  while (!(await socketLive(sock))) {
    if (exited) throw new Error('qemu-nbd exited before serving')
    if (Date.now() - t0 > 10_000) throw new Error('qemu-nbd did not start in 10 s')
    await sleep(20)
  }
  return `nbd+unix:///disk?socket=${sock}`
}

class MemBackend implements ExportBackend {
  readonly mem: Buffer
  readonly readOnly = false
  constructor(readonly size: number) {
    this.mem = randomBytes(size)
  }
  async read(offset: number, length: number): Promise<Buffer> {
    return Buffer.from(this.mem.subarray(offset, offset + length))
  }
  async write(offset: number, data: Buffer): Promise<void> {
    data.copy(this.mem, offset)
  }
  async writeZeroes(offset: number, length: number): Promise<void> {
    this.mem.fill(0, offset, offset + length)
  }
  async trim(offset: number, length: number): Promise<void> {
    this.mem.fill(0, offset, offset + length)
  }
  async flush(): Promise<void> {}
}

describe('against qemu-nbd', () => {
  before(() => needTool(needQemuNbd))
  test('given a sparse file, extents() finds exactly its data runs and reads return its bytes', async () => {
    const size = 16 * MiB
    const path = join(dir, 'sparse.img')
    const fh = await fsp.open(path, 'w+')
    await fh.truncate(size)
    await fh.write(randomBytes(64 * KiB), 0, 64 * KiB, 1 * MiB)
    await fh.write(randomBytes(4 * KiB), 0, 4 * KiB, 9 * MiB)
    await fh.close()
    const uri = await qemuNbd(path)
    const c = await NbdClient.connect(uri)
    try {
      assert.equal(c.info.structured, true)
      assert.notEqual(c.info.allocationContext, undefined, 'qemu-nbd selects base:allocation')
      assert.deepEqual(await c.extents(0, size), [
        {offset: 0, length: 1 * MiB, kind: 'hole'},
        {offset: 1 * MiB, length: 64 * KiB, kind: 'data'},
        {offset: 1 * MiB + 64 * KiB, length: 8 * MiB - 64 * KiB, kind: 'hole'},
        {offset: 9 * MiB, length: 4 * KiB, kind: 'data'},
        {offset: 9 * MiB + 4 * KiB, length: 7 * MiB - 4 * KiB, kind: 'hole'},
      ])
      const file = await fsp.readFile(path)
      // Holes and data in one READ: qemu answers with OFFSET_HOLE and OFFSET_DATA chunks.
      assert.ok((await c.read(512 * KiB, 2 * MiB)).equals(file.subarray(512 * KiB, 512 * KiB + 2 * MiB)))
      assert.ok((await c.read(9 * MiB - 100, 5000)).equals(file.subarray(9 * MiB - 100, 9 * MiB + 4900)))
    } finally {
      await c.close()
    }
    const v = await NbdVolume.open(uri, {write: false})
    try {
      assert.deepEqual(await v.extents(9 * MiB - 4 * KiB, 12 * KiB), [
        {offset: 9 * MiB - 4 * KiB, length: 4 * KiB, kind: 'hole'},
        {offset: 9 * MiB, length: 4 * KiB, kind: 'data'},
        {offset: 9 * MiB + 4 * KiB, length: 4 * KiB, kind: 'hole'},
      ])
    } finally {
      await v.close()
    }
  })
})

describe("against clonectl's own NbdServer", () => {
  test('HOLE without ZERO is data, ZERO alone is zero; a short answer is asked again; an unaligned range is clipped', async () => {
    const size = 1 * MiB
    const X = 64 * KiB
    const asked: Array<[number, number]> = []
    // Extent e: 0 data, 1 HOLE only, 2 ZERO only, 3 HOLE|ZERO, repeating; at most 4 extents an answer.
    const source: MetaContextSource = {
      contexts: () => ['base:allocation'],
      async status(_ctx: string, offset: number, length: number): Promise<StatusRun[]> {
        asked.push([offset, length])
        return extentRuns(offset, Math.min(length, 4 * X - (offset % X)), X, (e) => e % 4)
      },
    }
    const server = new NbdServer(new MemBackend(size), {metaContexts: source})
    const sock = join(dir, 'own.sock')
    await server.listenUnix(sock)
    try {
      const c = await NbdClient.connect(nbdUri(sock))
      try {
        assert.deepEqual(await c.extents(0, 8 * X), [
          {offset: 0, length: 2 * X, kind: 'data'},
          {offset: 2 * X, length: X, kind: 'zero'},
          {offset: 3 * X, length: X, kind: 'hole'},
          {offset: 4 * X, length: 2 * X, kind: 'data'},
          {offset: 6 * X, length: X, kind: 'zero'},
          {offset: 7 * X, length: X, kind: 'hole'},
        ])
        assert.deepEqual(asked, [
          [0, 8 * X],
          [4 * X, 4 * X],
        ])
        // Unaligned to the 512-byte minimum: widened on the wire, clipped in the answer.
        assert.deepEqual(await c.extents(2 * X + 100, 1000), [{offset: 2 * X + 100, length: 1000, kind: 'zero'}])
        assert.deepEqual(asked.at(-1), [2 * X, 1536])
      } finally {
        await c.close()
      }
    } finally {
      await server.close()
    }
  })

  test('given a server without block status, extents() is one data run and reads are unchanged', async () => {
    const backend = new MemBackend(1 * MiB)
    const server = new NbdServer(backend)
    const sock = join(dir, 'plain.sock')
    await server.listenUnix(sock)
    try {
      const c = await NbdClient.connect(nbdUri(sock))
      try {
        assert.equal(c.info.structured, true)
        assert.equal(c.info.allocationContext, undefined)
        assert.deepEqual(await c.extents(4096, 8192), [{offset: 4096, length: 8192, kind: 'data'}])
        assert.ok((await c.read(1000, 300_000)).equals(backend.mem.subarray(1000, 301_000)))
      } finally {
        await c.close()
      }
    } finally {
      await server.close()
    }
  })
})

describe('a server that breaks the structured reply rules', () => {
  /**
   * A scripted server: STRUCTURED_REPLY ACKed, meta contexts refused, GO answered; every
   * READ is answered by `answer` (cookie, offset, length) with whatever bytes it returns.
   */
  async function scripted(
    answer: (cookie: Buffer, offset: number, length: number, type: number, flags: number) => Buffer,
    txFlags: number = TxFlag.HAS_FLAGS,
  ): Promise<{uri: string; close: () => Promise<void>}> {
    const sock = join(dir, `bad${Math.random().toString(36).slice(2)}.sock`)
    const srv = createServer((s) => {
      let buf = Buffer.alloc(0)
      let phase: 'flags' | 'options' | 'io' = 'flags'
      s.write(encodeServerGreeting())
      s.on('error', () => undefined)
      s.on('data', (b: Buffer) => {
        buf = Buffer.concat([buf, b])
        for (;;) {
          if (phase === 'flags') {
            if (buf.length < 4) return
            buf = buf.subarray(4)
            phase = 'options'
          } else if (phase === 'options') {
            if (buf.length < 16) return
            const option = buf.readUInt32BE(8)
            const len = buf.readUInt32BE(12)
            if (buf.length < 16 + len) return
            buf = buf.subarray(16 + len)
            if (option === Opt.STRUCTURED_REPLY) s.write(encodeOptionReply(option, Rep.ACK))
            else if (option === Opt.GO) {
              s.write(encodeOptionReply(option, Rep.INFO, encodeInfoExport(1 * MiB, txFlags)))
              s.write(encodeOptionReply(option, Rep.ACK))
              phase = 'io'
            } else s.write(encodeOptionReply(option, Rep.ERR_UNSUP))
          } else {
            if (buf.length < 28) return
            const cookie = Buffer.from(buf.subarray(8, 16))
            const offset = Number(buf.readBigUInt64BE(16))
            const length = buf.readUInt32BE(24)
            const flags = buf.readUInt16BE(4)
            const type = buf.readUInt16BE(6)
            buf = buf.subarray(28)
            s.write(answer(cookie, offset, length, type, flags))
          }
        }
      })
    })
    await new Promise<void>((r) => srv.listen(sock, r))
    return {uri: nbdUri(sock), close: () => new Promise<void>((r) => srv.close(() => r()))}
  }

  function chunk(flags: number, type: number, cookie: Buffer, payload: Buffer): Buffer {
    const h = Buffer.alloc(20)
    h.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0)
    h.writeUInt16BE(flags, 4)
    h.writeUInt16BE(type, 6)
    cookie.copy(h, 8)
    h.writeUInt32BE(payload.length, 16)
    return Buffer.concat([h, payload])
  }
  const offsetData = (offset: number, data: Buffer): Buffer => {
    const o = Buffer.alloc(8)
    o.writeBigUInt64BE(BigInt(offset))
    return Buffer.concat([o, data])
  }

  test('READ data in two chunks out of order plus a hole chunk: read back exactly', async () => {
    const {uri, close} = await scripted((cookie, offset, length) => {
      const half = length / 2
      const hole = Buffer.alloc(12)
      hole.writeBigUInt64BE(BigInt(offset + half))
      hole.writeUInt32BE(half / 2, 8)
      return Buffer.concat([
        chunk(0, ReplyType.OFFSET_DATA, cookie, offsetData(offset + half + half / 2, Buffer.alloc(half / 2, 0xbb))),
        chunk(0, ReplyType.OFFSET_HOLE, cookie, hole),
        chunk(ReplyFlag.DONE, ReplyType.OFFSET_DATA, cookie, offsetData(offset, Buffer.alloc(half, 0xaa))),
      ])
    })
    try {
      const c = await NbdClient.connect(uri)
      try {
        const got = await c.read(0, 8192, Buffer.alloc(8192, 0x11))
        const want = Buffer.concat([Buffer.alloc(4096, 0xaa), Buffer.alloc(2048, 0), Buffer.alloc(2048, 0xbb)])
        assert.ok(got.equals(want))
      } finally {
        c.destroy()
      }
    } finally {
      await close()
    }
  })

  for (const [name, answer] of [
    ['data outside the request', (cookie: Buffer, offset: number, length: number) => chunk(ReplyFlag.DONE, ReplyType.OFFSET_DATA, cookie, offsetData(offset + 512, Buffer.alloc(length)))],
    ['DONE before every byte came', (cookie: Buffer, offset: number, length: number) => chunk(ReplyFlag.DONE, ReplyType.OFFSET_DATA, cookie, offsetData(offset, Buffer.alloc(length / 2)))],
    ['a simple reply to READ', (cookie: Buffer, _o: number, length: number) => {
      const h = Buffer.alloc(16)
      h.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0)
      cookie.copy(h, 8)
      return Buffer.concat([h, Buffer.alloc(length)])
    }],
    ['a block status chunk to READ', (cookie: Buffer) => chunk(ReplyFlag.DONE, ReplyType.BLOCK_STATUS, cookie, Buffer.alloc(12))],
  ] as const) {
    test(`${name}: a protocol error, the connection dropped, never wrong data`, async () => {
      const {uri, close} = await scripted(answer)
      try {
        const c = await NbdClient.connect(uri)
        try {
          await assert.rejects(c.read(0, 4096), (e: unknown) => e instanceof RemoteError && e.reason === 'protocol' && /protocol error/.test(e.message))
        } finally {
          c.destroy()
        }
      } finally {
        await close()
      }
    })
  }

  test('an ERROR chunk fails its READ with the errno, the connection stays', async () => {
    let n = 0
    const {uri, close} = await scripted((cookie, offset, length) => {
      if (n++ > 0) return chunk(ReplyFlag.DONE, ReplyType.OFFSET_DATA, cookie, offsetData(offset, Buffer.alloc(length, 7)))
      const e = Buffer.alloc(6 + 4)
      e.writeUInt32BE(Errno.EIO, 0)
      e.writeUInt16BE(4, 4)
      e.write('oops', 6)
      return chunk(ReplyFlag.DONE, ReplyType.ERROR, cookie, e)
    })
    try {
      const c = await NbdClient.connect(uri)
      try {
        await assert.rejects(c.read(0, 4096), (e: unknown) => e instanceof RemoteError && e.reason === 'reply' && e.errno === 'EIO')
        assert.ok((await c.read(0, 4096)).equals(Buffer.alloc(4096, 7)))
      } finally {
        c.destroy()
      }
    } finally {
      await close()
    }
  })
})

describe('NbdVolume zeroing', () => {
  test('writeZeroes and trim go as WRITE_ZEROES without NO_HOLE, so a remote clone stays sparse', async () => {
    const seen: Array<{type: number; flags: number}> = []
    const sock = join(dir, 'zero.sock')
    const srv = createServer((s) => {
      let buf = Buffer.alloc(0)
      let phase: 'flags' | 'options' | 'io' = 'flags'
      s.write(encodeServerGreeting())
      s.on('error', () => undefined)
      s.on('data', (b: Buffer) => {
        buf = Buffer.concat([buf, b])
        for (;;) {
          if (phase === 'flags') {
            if (buf.length < 4) return
            buf = buf.subarray(4)
            phase = 'options'
          } else if (phase === 'options') {
            if (buf.length < 16 || buf.length < 16 + buf.readUInt32BE(12)) return
            const option = buf.readUInt32BE(8)
            buf = buf.subarray(16 + buf.readUInt32BE(12))
            if (option === Opt.GO) {
              s.write(encodeOptionReply(option, Rep.INFO, encodeInfoExport(1 * MiB, TxFlag.HAS_FLAGS | TxFlag.SEND_WRITE_ZEROES | TxFlag.SEND_TRIM | TxFlag.SEND_FLUSH)))
              s.write(encodeOptionReply(option, Rep.ACK))
              phase = 'io'
            } else s.write(encodeOptionReply(option, Rep.ERR_UNSUP))
          } else {
            if (buf.length < 28) return
            seen.push({type: buf.readUInt16BE(6), flags: buf.readUInt16BE(4)})
            const h = Buffer.alloc(16)
            h.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0)
            buf.copy(h, 8, 8, 16)
            buf = buf.subarray(28)
            s.write(h)
          }
        }
      })
    })
    await new Promise<void>((r) => srv.listen(sock, r))
    try {
      const v = await NbdVolume.open(nbdUri(sock), {write: true})
      try {
        await v.writeZeroes(0, 64 * KiB)
        await v.writeZeroes(64 * KiB, 64 * KiB, {punch: true})
        await v.trim(128 * KiB, 64 * KiB)
      } finally {
        await v.close()
      }
      assert.deepEqual(seen.filter((x) => x.type !== 2 /* DISC */), [
        {type: 6, flags: 0},
        {type: 6, flags: 0},
        {type: 6, flags: 0},
      ])
    } finally {
      await new Promise<void>((r) => srv.close(() => r()))
    }
  })
})
