/**
 * NbdServer's structured replies and block status, byte by byte against the spec
 * (NetworkBlockDevice/nbd doc/proto.md): what real clients (test/interop/blockStatus.test.ts)
 * would not show when it is wrong in a way they tolerate.
 *
 * Given a 1 MiB in-memory export and a MetaContextSource with base:allocation and two delta
 * contexts:
 * - options: STRUCTURED_REPLY is ACKed once (no data), meta contexts need it first, LIST
 *   answers id 0 and takes namespace queries, SET answers ids and exact names only,
 *   EXTENDED_HEADERS is refused (ERR_UNSUP), bad data is ERR_INVALID, another export ERR_UNKNOWN;
 * - transmission: READ is one OFFSET_DATA chunk flagged DONE (a zero-length READ one NONE
 *   chunk), a failed READ one ERROR chunk; BLOCK_STATUS is one chunk per SET context in
 *   order, the last flagged DONE, clipped to the request, one descriptor with REQ_ONE, and
 *   EINVAL for length 0 or past the end; WRITE keeps its simple reply;
 * - a server without a source refuses meta contexts (ERR_UNSUP) and BLOCK_STATUS (EINVAL).
 */
import assert from 'node:assert/strict'
import {connect, type Socket} from 'node:net'
import {join} from 'node:path'
import * as fsp from 'node:fs/promises'
import {after, before, describe, test} from 'node:test'
import {type MetaContextSource, extentRuns} from '../../src/nbd/BlockStatus.js'
import type {ExportBackend} from '../../src/nbd/ExportBackend.js'
import {NbdServer} from '../../src/nbd/NbdServer.js'
import {
  Cmd,
  CmdFlag,
  Errno,
  GREETING_SIZE,
  OPTION_REPLY_HEADER_SIZE,
  Opt,
  Rep,
  ReplyFlag,
  ReplyType,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_SIZE,
  type StatusRun,
  decodeMetaContextReply,
  decodeOptionReplyHeader,
  decodeStructuredHeader,
  encodeClientFlags,
  encodeGoData,
  encodeMetaContextRequest,
  encodeOption,
  encodeRequest,
} from '../../src/nbd/protocol.js'
import {tempDir} from '../helpers/serve.js'

const SIZE = 1024 * 1024
const X = 64 * 1024

class MemBackend implements ExportBackend {
  readonly mem = Buffer.alloc(SIZE)
  readonly readOnly = false
  readonly size = SIZE
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

/** base:allocation: a hole in the first half, data after; delta:a dirty on extent 2; delta:b all clean. */
const source: MetaContextSource = {
  contexts: () => ['base:allocation', 'clonectl:delta:a', 'clonectl:delta:b'],
  async status(context: string, offset: number, length: number): Promise<StatusRun[]> {
    if (context === 'base:allocation') return extentRuns(offset, length, SIZE / 2, (e) => (e === 0 ? 3 : 0))
    if (context === 'clonectl:delta:a') return extentRuns(offset, length, X, (e) => (e === 2 ? 1 : 0))
    return extentRuns(offset, length, X, () => 0)
  },
}

/** A raw client: bytes in a buffer, read exactly. */
class Raw {
  private buf = Buffer.alloc(0)
  private wake?: () => void
  private closed = false
  private constructor(readonly s: Socket) {
    s.on('data', (b: Buffer) => {
      this.buf = Buffer.concat([this.buf, b])
      this.wake?.()
    })
    s.on('close', () => {
      this.closed = true
      this.wake?.()
    })
  }

  static async open(path: string): Promise<Raw> {
    const s = connect(path)
    await new Promise<void>((r, j) => s.once('connect', r).once('error', j))
    const c = new Raw(s)
    await c.take(GREETING_SIZE)
    s.write(encodeClientFlags(3))
    return c
  }

  async take(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.closed) throw new Error(`connection closed with ${this.buf.length} of ${n} bytes`)
      await new Promise<void>((r) => (this.wake = r))
    }
    const out = this.buf.subarray(0, n)
    this.buf = this.buf.subarray(n)
    return out
  }

  /** Send an option; the replies up to and including the final one. */
  async option(option: number, data?: Buffer): Promise<Array<{type: number; data: Buffer}>> {
    this.s.write(encodeOption(option, data))
    const out: Array<{type: number; data: Buffer}> = []
    for (;;) {
      const h = decodeOptionReplyHeader(await this.take(OPTION_REPLY_HEADER_SIZE))
      assert.ok(h, 'an option reply')
      assert.equal(h.option, option)
      const d = Buffer.from(await this.take(h.length))
      out.push({type: h.type, data: d})
      if (h.type === Rep.ACK) assert.equal(d.length, 0, 'an ACK carries no data')
      if (h.type === Rep.ACK || h.type >= 0x80000000) return out
    }
  }

  async go(): Promise<void> {
    const r = await this.option(Opt.GO, encodeGoData('', []))
    assert.equal(r.at(-1)!.type, Rep.ACK)
  }

  request(type: number, offset: number, length: number, cookie: bigint, flags = 0, payload?: Buffer): void {
    this.s.write(encodeRequest({type, flags, cookie, offset: BigInt(offset), length}))
    if (payload) this.s.write(payload)
  }

  /** One structured chunk: header and payload. */
  async chunk(): Promise<{flags: number; type: number; cookie: bigint; payload: Buffer}> {
    const h = decodeStructuredHeader(await this.take(STRUCTURED_REPLY_SIZE))
    assert.ok(h, 'a structured reply chunk')
    return {flags: h.flags, type: h.type, cookie: h.cookie, payload: Buffer.from(await this.take(h.length))}
  }

  close(): void {
    this.s.destroy()
  }
}

const ctxReq = (queries: string[], name = ''): Buffer => encodeMetaContextRequest(name, queries)
const metaOf = (replies: Array<{type: number; data: Buffer}>): Array<{id: number; name: string}> =>
  replies.filter((r) => r.type === Rep.META_CONTEXT).map((r) => decodeMetaContextReply(r.data)!)

function descriptors(payload: Buffer): {id: number; runs: StatusRun[]} {
  const id = payload.readUInt32BE(0)
  const runs: StatusRun[] = []
  for (let p = 4; p < payload.length; p += 8) runs.push({length: payload.readUInt32BE(p), flags: payload.readUInt32BE(p + 4)})
  return {id, runs}
}

let dir: string
let server: NbdServer
let plain: NbdServer
let sock: string
let plainSock: string
const backend = new MemBackend()

before(async () => {
  dir = await tempDir('nbdstructured')
  sock = join(dir, 'bs.sock')
  plainSock = join(dir, 'plain.sock')
  server = new NbdServer(backend, {exportName: 'disk', metaContexts: source})
  plain = new NbdServer(backend)
  await server.listenUnix(sock)
  await plain.listenUnix(plainSock)
  for (let i = 0; i < SIZE; i++) backend.mem[i] = i & 0xff
})

after(async () => {
  await server.close()
  await plain.close()
  await fsp.rm(dir, {recursive: true, force: true})
})

describe('option haggling for structured replies and meta contexts', () => {
  test('STRUCTURED_REPLY: data refused, then ACK once, then ERR_INVALID; meta contexts need it first; extended headers refused', async () => {
    const c = await Raw.open(sock)
    try {
      assert.equal((await c.option(Opt.SET_META_CONTEXT, ctxReq(['base:allocation'])))[0].type, Rep.ERR_INVALID, 'SET before STRUCTURED_REPLY')
      assert.equal((await c.option(Opt.LIST_META_CONTEXT, ctxReq([])))[0].type, Rep.ERR_INVALID, 'LIST before STRUCTURED_REPLY')
      assert.equal((await c.option(Opt.STRUCTURED_REPLY, Buffer.from('x')))[0].type, Rep.ERR_INVALID, 'with data')
      assert.equal((await c.option(Opt.EXTENDED_HEADERS))[0].type, Rep.ERR_UNSUP, 'extended headers refused properly')
      assert.deepEqual(await c.option(Opt.STRUCTURED_REPLY), [{type: Rep.ACK, data: Buffer.alloc(0)}])
      assert.equal((await c.option(Opt.STRUCTURED_REPLY))[0].type, Rep.ERR_INVALID, 'twice')
    } finally {
      c.close()
    }
  })

  test('LIST: no query lists all with id 0, a namespace query its contexts; SET: exact names, ids; bad data and other exports refused', async () => {
    const c = await Raw.open(sock)
    try {
      await c.option(Opt.STRUCTURED_REPLY)
      assert.deepEqual(metaOf(await c.option(Opt.LIST_META_CONTEXT, ctxReq([]))), [
        {id: 0, name: 'base:allocation'},
        {id: 0, name: 'clonectl:delta:a'},
        {id: 0, name: 'clonectl:delta:b'},
      ])
      assert.deepEqual(metaOf(await c.option(Opt.LIST_META_CONTEXT, ctxReq(['clonectl:delta:']))), [
        {id: 0, name: 'clonectl:delta:a'},
        {id: 0, name: 'clonectl:delta:b'},
      ])
      assert.deepEqual(metaOf(await c.option(Opt.LIST_META_CONTEXT, ctxReq(['base:allocation', 'qemu:dirty-bitmap:x']))), [{id: 0, name: 'base:allocation'}])
      const set = await c.option(Opt.SET_META_CONTEXT, ctxReq(['clonectl:delta:', 'nope:x']))
      assert.deepEqual(set, [{type: Rep.ACK, data: Buffer.alloc(0)}], 'SET selects no namespace, and ignores unknown names')
      assert.equal((await c.option(Opt.SET_META_CONTEXT, ctxReq(['base:allocation'], 'other')))[0].type, Rep.ERR_UNKNOWN)
      assert.equal((await c.option(Opt.SET_META_CONTEXT, Buffer.from([0, 0, 0, 9, 1])))[0].type, Rep.ERR_INVALID)
      assert.deepEqual(metaOf(await c.option(Opt.SET_META_CONTEXT, ctxReq(['clonectl:delta:a', 'base:allocation'], 'disk'))), [
        {id: 1, name: 'base:allocation'},
        {id: 2, name: 'clonectl:delta:a'},
      ])
    } finally {
      c.close()
    }
  })
})

describe('transmission with structured replies', () => {
  test('READ is one OFFSET_DATA chunk flagged DONE; a zero-length READ one NONE chunk; a failed READ one ERROR chunk; WRITE stays simple', async () => {
    const c = await Raw.open(sock)
    try {
      await c.option(Opt.STRUCTURED_REPLY)
      await c.go()
      c.request(Cmd.READ, 4096, 8192, 7n)
      const r = await c.chunk()
      assert.deepEqual([r.flags, r.type, r.cookie], [ReplyFlag.DONE, ReplyType.OFFSET_DATA, 7n])
      assert.equal(r.payload.readBigUInt64BE(0), 4096n)
      assert.ok(r.payload.subarray(8).equals(backend.mem.subarray(4096, 4096 + 8192)))
      c.request(Cmd.READ, 0, 0, 8n)
      const z = await c.chunk()
      assert.deepEqual([z.flags, z.type, z.cookie, z.payload.length], [ReplyFlag.DONE, ReplyType.NONE, 8n, 0])
      c.request(Cmd.READ, SIZE - 512, 1024, 9n)
      const e = await c.chunk()
      assert.deepEqual([e.flags, e.type, e.cookie], [ReplyFlag.DONE, ReplyType.ERROR, 9n])
      assert.equal(e.payload.readUInt32BE(0), Errno.EINVAL)
      assert.equal(e.payload.readUInt16BE(4), 0, 'no message')
      assert.equal(e.payload.length, 6)
      c.request(Cmd.WRITE, 0, 4, 10n, 0, Buffer.from([0, 1, 2, 3]))
      const w = await c.take(16)
      assert.equal(w.readUInt32BE(0), SIMPLE_REPLY_MAGIC)
      assert.equal(w.readUInt32BE(4), 0)
      assert.equal(w.readBigUInt64BE(8), 10n)
    } finally {
      c.close()
    }
  })

  test('BLOCK_STATUS: one chunk per SET context in order, the last DONE, clipped to the request; REQ_ONE one descriptor; length 0 and past the end EINVAL', async () => {
    const c = await Raw.open(sock)
    try {
      await c.option(Opt.STRUCTURED_REPLY)
      const set = metaOf(await c.option(Opt.SET_META_CONTEXT, ctxReq(['base:allocation', 'clonectl:delta:a'])))
      await c.go()
      // From 100 KiB for 500 KiB: in base:allocation a hole to 512 KiB then data; delta:a dirty on [128 KiB, 192 KiB).
      c.request(Cmd.BLOCK_STATUS, 100 * 1024, 500 * 1024, 11n)
      const a = await c.chunk()
      const b = await c.chunk()
      assert.deepEqual([a.flags, a.type, a.cookie], [0, ReplyType.BLOCK_STATUS, 11n])
      assert.deepEqual([b.flags, b.type, b.cookie], [ReplyFlag.DONE, ReplyType.BLOCK_STATUS, 11n])
      assert.deepEqual(descriptors(a.payload), {id: set[0].id, runs: [{length: 412 * 1024, flags: 3}, {length: 88 * 1024, flags: 0}]})
      assert.deepEqual(descriptors(b.payload), {
        id: set[1].id,
        runs: [
          {length: 28 * 1024, flags: 0},
          {length: 64 * 1024, flags: 1},
          {length: 408 * 1024, flags: 0},
        ],
      })
      c.request(Cmd.BLOCK_STATUS, 0, SIZE, 12n, CmdFlag.REQ_ONE)
      const one = [await c.chunk(), await c.chunk()]
      assert.deepEqual(descriptors(one[0].payload).runs, [{length: SIZE / 2, flags: 3}])
      assert.deepEqual(descriptors(one[1].payload).runs, [{length: 2 * X, flags: 0}])
      for (const [off, len, cookie] of [
        [0, 0, 13n],
        [SIZE - 512, 1024, 14n],
      ] as const) {
        c.request(Cmd.BLOCK_STATUS, off, len, cookie)
        const e = await c.chunk()
        assert.deepEqual([e.flags, e.type, e.cookie, e.payload.readUInt32BE(0)], [ReplyFlag.DONE, ReplyType.ERROR, cookie, Errno.EINVAL])
      }
    } finally {
      c.close()
    }
  })
})

describe('a server without a MetaContextSource', () => {
  test('meta contexts are ERR_UNSUP and BLOCK_STATUS is EINVAL (a simple reply without structured replies)', async () => {
    const c = await Raw.open(plainSock)
    try {
      assert.equal((await c.option(Opt.LIST_META_CONTEXT, ctxReq([])))[0].type, Rep.ERR_UNSUP)
      await c.go()
      c.request(Cmd.BLOCK_STATUS, 0, 4096, 1n)
      const r = await c.take(16)
      assert.equal(r.readUInt32BE(0), SIMPLE_REPLY_MAGIC)
      assert.equal(r.readUInt32BE(4), Errno.EINVAL)
    } finally {
      c.close()
    }
  })
})

describe('random requests with structured replies and block status', () => {
  test('every request gets exactly one final chunk (or simple reply), in a parsable stream; the server keeps serving', async () => {
    let seed = 12345
    const rnd = (): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31
      return seed / 2 ** 31
    }
    const c = await Raw.open(sock)
    try {
      await c.option(Opt.STRUCTURED_REPLY)
      await c.option(Opt.SET_META_CONTEXT, ctxReq(['base:allocation', 'clonectl:delta:b', 'clonectl:delta:a']))
      await c.go()
      const N = 300
      const want = new Map<bigint, {type: number; offset: number; length: number}>()
      for (let i = 0; i < N; i++) {
        const type = [Cmd.READ, Cmd.BLOCK_STATUS, Cmd.BLOCK_STATUS, Cmd.FLUSH, Cmd.CACHE][Math.floor(rnd() * 5)]
        const flags = rnd() < 0.2 ? Math.floor(rnd() * 32) : rnd() < 0.3 ? CmdFlag.REQ_ONE : 0
        const offset = rnd() < 0.1 ? SIZE - 512 + Math.floor(rnd() * 1024) : Math.floor(rnd() * (SIZE / 512)) * 512
        const length = rnd() < 0.1 ? 0 : Math.floor(rnd() * 64) * 4096 + (rnd() < 0.1 ? 1 : 0)
        const cookie = BigInt(1000 + i)
        want.set(cookie, {type, offset, length})
        c.request(type, offset, length, cookie, flags)
      }
      const finals = new Map<bigint, number>()
      while (finals.size < N) {
        const magic = (await c.take(4)).readUInt32BE(0)
        if (magic === SIMPLE_REPLY_MAGIC) {
          const rest = await c.take(12)
          const cookie = rest.readBigUInt64BE(4)
          const w = want.get(cookie)
          assert.ok(w, `a simple reply for unknown cookie ${cookie}`)
          assert.notEqual(w.type, Cmd.READ, 'READ never gets a simple reply after STRUCTURED_REPLY')
          assert.notEqual(w.type, Cmd.BLOCK_STATUS, 'BLOCK_STATUS never gets a simple reply')
          finals.set(cookie, (finals.get(cookie) ?? 0) + 1)
          continue
        }
        const rest = await c.take(STRUCTURED_REPLY_SIZE - 4)
        const flags = rest.readUInt16BE(0)
        const type = rest.readUInt16BE(2)
        const cookie = rest.readBigUInt64BE(4)
        const payload = await c.take(rest.readUInt32BE(12))
        const w = want.get(cookie)
        assert.ok(w, `a chunk for unknown cookie ${cookie}`)
        assert.ok(!finals.has(cookie), `a chunk after the final one for cookie ${cookie}`)
        if (type === ReplyType.BLOCK_STATUS) {
          const runs = descriptors(payload).runs
          assert.ok(runs.length >= 1)
          const total = runs.reduce((a, r) => a + r.length, 0)
          assert.ok(total <= w.length && runs.every((r) => r.length > 0), `block status runs ${JSON.stringify(runs)} for ${w.offset}+${w.length}`)
        } else if (type === ReplyType.OFFSET_DATA) {
          assert.equal(payload.length, 8 + w.length)
          assert.ok(payload.subarray(8).equals(backend.mem.subarray(w.offset, w.offset + w.length)))
        } else assert.ok(type === ReplyType.ERROR || type === ReplyType.NONE, `chunk type ${type}`)
        if (flags & ReplyFlag.DONE) finals.set(cookie, 1)
      }
      assert.equal(finals.size, N)
      assert.ok([...finals.values()].every((n) => n === 1))
      // Still serving on this connection.
      c.request(Cmd.READ, 0, 512, 1n)
      const r = await c.chunk()
      assert.deepEqual([r.flags, r.type, r.cookie], [ReplyFlag.DONE, ReplyType.OFFSET_DATA, 1n])
    } finally {
      c.close()
    }
  })
})
