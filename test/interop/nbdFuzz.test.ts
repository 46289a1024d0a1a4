/**
 * NbdServer under hostile and random input, over a unix socket, driven byte by byte from
 * here (no NBD library): the server runs in this process, so a crash fails the run.
 *
 * (a) Garbage: instead of the client flags, during option haggling, after the handshake,
 *     and clients that vanish half-way. Each such connection is dropped; a fresh,
 *     well-behaved client is served afterwards.
 * (b) Random valid-looking requests: random types, flags, offsets and lengths near and past
 *     the end (and past 2^53), write payloads, sent pipelined and cut at random byte
 *     boundaries, against a backend that answers after random delays (replies out of order)
 *     and fails on purpose in one region. Every request but DISC gets exactly one reply,
 *     with its own cookie and the errno the spec gives; data read back matches a model.
 *
 * Seeded: the seed is printed; replay with NBD_FUZZ_SEED=<seed>.
 */
import assert from 'node:assert/strict'
import * as fsp from 'node:fs/promises'
import {connect, type Socket} from 'node:net'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import type {ExportBackend} from '../../src/nbd/ExportBackend.js'
import {NbdServer} from '../../src/nbd/NbdServer.js'
import {
  BLOCK_MAX,
  ClientFlag,
  Cmd,
  CmdFlag,
  Errno,
  GREETING_SIZE,
  IHAVEOPT,
  Info,
  OPTION_REPLY_HEADER_SIZE,
  Opt,
  REQUEST_MAGIC,
  Rep,
  SIMPLE_REPLY_SIZE,
  TxFlag,
  decodeInfo,
  decodeOptionReplyHeader,
  decodeServerGreeting,
  decodeSimpleReply,
  encodeClientFlags,
  encodeGoData,
  encodeOption,
  encodeRequest,
  isRepError,
} from '../../src/nbd/protocol.js'
import {KiB, MiB, prng, sleep, tempDir} from '../helpers/serve.js'

const SIZE = 8 * MiB + 3 * 512 // not a multiple of a page or an extent, on purpose
/** The backend fails requests that start in here (see MemBackend.fault). */
const FAULT_START = 2 * MiB
const FAULT_END = FAULT_START + 20 * 4096

const seed = Number(process.env.NBD_FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31))
console.log(`nbdFuzz seed ${seed} (replay with NBD_FUZZ_SEED=${seed})`)
const rnd = prng(seed)
const randInt = (n: number): number => Math.floor(rnd() * n)
const pick = <T>(xs: readonly T[]): T => xs[randInt(xs.length)]
const randomBytes = (n: number): Buffer => {
  const b = Buffer.allocUnsafe(n)
  let i = 0
  for (; i + 4 <= n; i += 4) b.writeUInt32LE((rnd() * 2 ** 32) >>> 0, i)
  for (; i < n; i++) b[i] = randInt(256)
  return b
}

/**
 * An in-memory export whose calls finish after a small random delay, so replies go out of
 * order. A request starting in [FAULT_START, FAULT_END) fails, by 4 KiB page: a rejected
 * EIO, an ENOSPC carried in `.errno` (as VolumeIoError does), a synchronous throw with
 * code EPERM, an EINVAL, and a read that returns too few bytes (or a plain Error).
 */
class MemBackend implements ExportBackend {
  readonly data: Buffer
  calls = 0
  constructor(
    readonly size: number,
    readonly readOnly: boolean,
    private readonly rand: () => number,
  ) {
    this.data = Buffer.alloc(size)
  }

  /** The NBD errno a request at `offset` fails with, or 0. */
  static fault(offset: number): number {
    if (offset < FAULT_START || offset >= FAULT_END) return 0
    return [Errno.EIO, Errno.ENOSPC, Errno.EPERM, Errno.EINVAL, Errno.EIO][Math.floor((offset - FAULT_START) / 4096) % 5]
  }

  /** Not async: the EPERM mode throws synchronously, before any promise exists. */
  private jitter(offset: number): Promise<void> {
    this.calls++
    const mode = offset >= FAULT_START && offset < FAULT_END ? Math.floor((offset - FAULT_START) / 4096) % 5 : -1
    if (mode === 2) throw Object.assign(new Error('injected: a synchronous throw'), {code: 'EPERM'})
    const r = this.rand()
    const wait: Promise<unknown> = r < 0.25 ? sleep(Math.floor(r * 8)) : r < 0.6 ? new Promise((res) => setImmediate(res)) : Promise.resolve()
    return wait.then(() => {
      if (mode === 0) throw Object.assign(new Error('injected'), {code: 'EIO'})
      if (mode === 1) throw Object.assign(new Error('injected'), {errno: 'ENOSPC'})
      if (mode === 3) throw Object.assign(new Error('injected'), {code: 'EINVAL'})
    })
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.jitter(offset).then(() => {
      if (MemBackend.fault(offset) && Math.floor((offset - FAULT_START) / 4096) % 5 === 4) return Buffer.alloc(Math.max(0, length - 1))
      return Buffer.from(this.data.subarray(offset, offset + length))
    })
  }

  write(offset: number, data: Buffer): Promise<void> {
    return this.jitter(offset).then(() => {
      if (MemBackend.fault(offset)) throw new Error('injected: no code')
      data.copy(this.data, offset)
    })
  }

  writeZeroes(offset: number, length: number): Promise<void> {
    return this.jitter(offset).then(() => {
      if (MemBackend.fault(offset)) throw new Error('injected: no code')
      this.data.fill(0, offset, offset + length)
    })
  }

  trim(offset: number, length: number): Promise<void> {
    return this.writeZeroes(offset, length)
  }

  async flush(): Promise<void> {
    await this.jitter(0)
  }
}

// ---------------------------------------------------------------------------------------
// A raw client: bytes in, bytes out, every reply checked against what was asked.

interface Expect {
  type: number
  length: number
  resolve: (r: {error: number; data?: Buffer}) => void
}

class RawClient {
  size = 0n
  flags = 0
  readonly problems: string[] = []
  private chunks: Buffer[] = []
  private have = 0
  private readonly waiting = new Map<bigint, Expect>()
  private wake: (() => void) | undefined
  private transmission = false
  closed = false
  readonly closedP: Promise<void>

  private constructor(readonly s: Socket) {
    this.closedP = new Promise((r) =>
      s.on('close', () => {
        this.closed = true
        this.wake?.()
        r()
      }),
    )
    s.on('error', () => undefined)
    s.on('data', (b: Buffer) => {
      this.chunks.push(b)
      this.have += b.length
      if (this.transmission) this.parseReplies()
      else this.wake?.()
    })
  }

  static async open(path: string): Promise<RawClient> {
    const s = connect(path)
    await new Promise<void>((r, j) => {
      s.once('connect', () => r())
      s.once('error', j)
    })
    return new RawClient(s)
  }

  /** A client through OPT_GO, ready for requests. */
  static async connect(path: string): Promise<RawClient> {
    const c = await RawClient.open(path)
    const g = decodeServerGreeting(await c.read(GREETING_SIZE))
    assert.ok(g, 'a newstyle greeting')
    c.s.write(encodeClientFlags(ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES))
    c.s.write(encodeOption(Opt.GO, encodeGoData('', [Info.BLOCK_SIZE])))
    for (;;) {
      const h = decodeOptionReplyHeader(await c.read(OPTION_REPLY_HEADER_SIZE))
      assert.ok(h && h.option === Opt.GO, 'an option reply to GO')
      const data = await c.read(h.length)
      if (h.type === Rep.ACK) break
      assert.equal(h.type, Rep.INFO)
      const info = decodeInfo(data)
      if (info?.type === Info.EXPORT) {
        c.size = info.size
        c.flags = info.flags
      }
    }
    c.transmission = true
    c.parseReplies()
    return c
  }

  /** Everything received so far, without consuming it (for the raw garbage tests). */
  received(): Buffer {
    return Buffer.concat(this.chunks)
  }

  async read(n: number): Promise<Buffer> {
    while (this.have < n) {
      if (this.closed) throw new Error(`connection closed with ${this.have} of ${n} bytes`)
      await new Promise<void>((r) => (this.wake = r))
    }
    return this.take(n)
  }

  private take(n: number): Buffer {
    const all = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks)
    this.chunks = all.length > n ? [all.subarray(n)] : []
    this.have -= n
    return all.subarray(0, n)
  }

  private current: {cookie: bigint; error: number; need: number} | undefined

  private parseReplies(): void {
    for (;;) {
      if (!this.current) {
        if (this.have < SIMPLE_REPLY_SIZE) return
        const r = decodeSimpleReply(this.take(SIMPLE_REPLY_SIZE))
        if (!r) {
          this.problems.push('a reply with a bad magic')
          this.s.destroy()
          return
        }
        const w = this.waiting.get(r.cookie)
        if (!w) {
          this.problems.push(`a reply for cookie ${r.cookie}, which is not waiting (duplicate or unknown)`)
          continue
        }
        this.current = {cookie: r.cookie, error: r.error, need: w.type === Cmd.READ && r.error === 0 ? w.length : 0}
      }
      const cur = this.current
      if (this.have < cur.need) return
      const data = cur.need ? Buffer.from(this.take(cur.need)) : undefined
      this.current = undefined
      const w = this.waiting.get(cur.cookie)!
      this.waiting.delete(cur.cookie)
      w.resolve({error: cur.error, data})
    }
  }

  get inflight(): number {
    return this.waiting.size
  }

  pendingCookies(): bigint[] {
    return [...this.waiting.keys()]
  }

  /** Register a request (its bytes are sent by the caller) and get its reply. */
  expect(cookie: bigint, type: number, length: number): Promise<{error: number; data?: Buffer}> {
    assert.ok(!this.waiting.has(cookie), 'cookies are unique')
    return new Promise((resolve) => this.waiting.set(cookie, {type, length, resolve}))
  }

  /** Send bytes cut at random boundaries, sometimes yielding between pieces. */
  async sendRagged(bytes: Buffer): Promise<void> {
    let p = 0
    while (p < bytes.length) {
      const n = rnd() < 0.5 ? bytes.length - p : 1 + randInt(Math.min(bytes.length - p, pick([3, 29, 700, 70_000])))
      this.s.write(bytes.subarray(p, p + n))
      p += n
      if (rnd() < 0.2) await new Promise((r) => setImmediate(r))
    }
  }

  async request(type: number, offset: number | bigint, length: number, opts: {flags?: number; payload?: Buffer} = {}): Promise<{error: number; data?: Buffer}> {
    const cookie = BigInt(randInt(2 ** 31)) << 32n | BigInt(randInt(2 ** 31))
    const p = this.expect(cookie, type, length)
    this.s.write(encodeRequest({flags: opts.flags ?? 0, type, cookie, offset: BigInt(offset), length}))
    if (opts.payload) this.s.write(opts.payload)
    return p
  }

  async disconnect(): Promise<void> {
    this.s.write(encodeRequest({flags: 0, type: Cmd.DISC, cookie: 0n, offset: 0n, length: 0}))
    await Promise.race([this.closedP, sleep(5000)])
    this.s.destroy()
  }
}

async function waitClosed(c: RawClient, ms = 3000): Promise<boolean> {
  await Promise.race([c.closedP, sleep(ms)])
  return c.closed
}

// ---------------------------------------------------------------------------------------

let dir: string
let sock: string
let roSock: string
let backend: MemBackend
let roBackend: MemBackend
let server: NbdServer
let roServer: NbdServer
const logs: string[] = []

before(async () => {
  dir = await tempDir('nbdfuzz')
  sock = join(dir, 'nbd.sock')
  roSock = join(dir, 'ro.sock')
  backend = new MemBackend(SIZE, false, prng(seed ^ 0x5eed))
  // A small in-flight cap, so pausing and resuming the socket is exercised all the time.
  server = new NbdServer(backend, {log: (m) => logs.push(m), maxInflight: 8})
  await server.listenUnix(sock)
  roBackend = new MemBackend(SIZE, true, prng(seed ^ 0xf00d))
  randomBytes(SIZE).copy(roBackend.data)
  // Its log callback throws: the server must shrug that off too.
  roServer = new NbdServer(roBackend, {
    log: (m) => {
      logs.push(m)
      throw new Error('the log callback broke')
    },
  })
  await roServer.listenUnix(roSock)
})

after(async () => {
  await server?.close()
  await roServer?.close()
  await fsp.rm(dir, {recursive: true, force: true})
})

/** A fresh well-behaved client is still served: write, read back, flush. */
async function serverStillServes(): Promise<void> {
  const c = await RawClient.connect(sock)
  try {
    assert.equal(c.size, BigInt(SIZE))
    const off = FAULT_END + randInt((SIZE - FAULT_END) / 512 - 8) * 512
    const data = randomBytes(4096)
    assert.equal((await c.request(Cmd.WRITE, off, 4096, {payload: data})).error, 0)
    const r = await c.request(Cmd.READ, off, 4096)
    assert.equal(r.error, 0)
    assert.deepEqual(r.data, data)
    assert.equal((await c.request(Cmd.FLUSH, 0, 0)).error, 0)
    assert.deepEqual(c.problems, [])
  } finally {
    await c.disconnect()
  }
}

describe(`NBD server fuzz (seed ${seed})`, {timeout: 240_000}, () => {
  test('garbage instead of the client flags: dropped after the greeting', async () => {
    for (let i = 0; i < 30; i++) {
      const c = await RawClient.open(sock)
      const g = randomBytes(4 + randInt(200))
      // Never valid flags by chance (FIXED_NEWSTYLE set and no unknown bits).
      if ((g.readUInt32BE(0) & ~3) === 0) g[0] = 0xff
      c.s.write(g)
      assert.ok(await waitClosed(c), `connection ${i} with garbage flags was not dropped`)
      assert.equal(c.received().length, GREETING_SIZE, 'only the greeting was sent')
    }
    // A client without FIXED_NEWSTYLE (plain newstyle) is refused too.
    const c = await RawClient.open(sock)
    c.s.write(encodeClientFlags(ClientFlag.NO_ZEROES))
    assert.ok(await waitClosed(c))
    await serverStillServes()
  })

  test('garbage during option haggling: dropped', async () => {
    for (let i = 0; i < 40; i++) {
      const c = await RawClient.open(sock)
      const g = randomBytes(16 + randInt(200))
      if (g.readBigUInt64BE(0) === IHAVEOPT) g[0] ^= 0xff
      // Sometimes valid options first (answered), then garbage.
      const lead = rnd() < 0.5 ? Buffer.concat([encodeOption(Opt.LIST), encodeOption(Opt.STRUCTURED_REPLY)]) : Buffer.alloc(0)
      await c.sendRagged(Buffer.concat([encodeClientFlags(pick([1, 3])), lead, g]))
      assert.ok(await waitClosed(c), `connection ${i} with garbage options was not dropped`)
    }
    // An option that claims 4 GiB of data is refused at once, not buffered.
    const c = await RawClient.open(sock)
    const h = encodeOption(Opt.GO)
    h.writeUInt32BE(0xfffffff0, 12)
    c.s.write(Buffer.concat([encodeClientFlags(3), h]))
    assert.ok(await waitClosed(c), 'an option with 4 GiB of data was not refused')
    // EXPORT_NAME for an export that does not exist: no error reply exists, so a close.
    const d = await RawClient.open(sock)
    d.s.write(Buffer.concat([encodeClientFlags(3), encodeOption(Opt.EXPORT_NAME, Buffer.from('nope'))]))
    assert.ok(await waitClosed(d), 'EXPORT_NAME of an unknown export did not close')
    await serverStillServes()
  })

  test('garbage after the handshake: dropped; requests sent before it are answered', async () => {
    for (let i = 0; i < 40; i++) {
      const c = await RawClient.connect(sock)
      const off = FAULT_END + randInt((SIZE - FAULT_END) / 4096 - 1) * 4096
      const ok = c.request(Cmd.READ, off, 4096)
      const g = randomBytes(28 + randInt(300))
      if (g.readUInt32BE(0) === REQUEST_MAGIC) g[0] ^= 0xff
      await c.sendRagged(g)
      assert.ok(await waitClosed(c), `connection ${i} with garbage requests was not dropped`)
      // The read went out before the garbage; the server answers it unless the drop raced
      // the backend (then the connection is gone and nothing more is owed).
      const done = await Promise.race([ok.then(() => true), sleep(50).then(() => false)])
      if (done) assert.equal((await ok).error, 0)
      assert.deepEqual(c.problems, [])
    }
    // A write whose payload would be over 64 MiB drops the connection instead of buffering.
    const c = await RawClient.connect(sock)
    c.s.write(encodeRequest({flags: 0, type: Cmd.WRITE, cookie: 7n, offset: 0n, length: 0xffffffff}))
    assert.ok(await waitClosed(c), 'a 4 GiB write payload was not refused')
    await serverStillServes()
  })

  test('clients that vanish mid-handshake, mid-option or mid-payload leave the server serving', async () => {
    for (let i = 0; i < 30; i++) {
      const c = await RawClient.open(sock)
      const stage = randInt(4)
      if (stage >= 1) c.s.write(encodeClientFlags(3))
      if (stage === 2) c.s.write(encodeOption(Opt.GO, encodeGoData('')).subarray(0, 10 + randInt(10)))
      if (stage >= 3) {
        // A complete GO, a read in flight, then half a write payload.
        c.s.write(encodeOption(Opt.GO, encodeGoData('')))
        c.s.write(encodeRequest({flags: 0, type: Cmd.READ, cookie: 2n, offset: BigInt(FAULT_END), length: 65536}))
        c.s.write(encodeRequest({flags: 0, type: Cmd.WRITE, cookie: 1n, offset: 0n, length: 65536}))
        c.s.write(randomBytes(1000))
      }
      await sleep(randInt(5))
      c.s.destroy()
    }
    await serverStillServes()
  })

  test('random options: exactly one final reply each, for the option asked', async () => {
    const c = await RawClient.open(sock)
    const options = [Opt.LIST, Opt.INFO, Opt.STARTTLS, Opt.STRUCTURED_REPLY, Opt.LIST_META_CONTEXT, Opt.SET_META_CONTEXT, Opt.EXTENDED_HEADERS, Opt.PEEK_EXPORT, 0, 12, 99, 0x7fffffff]
    const sent: number[] = []
    const parts: Buffer[] = [encodeClientFlags(3)]
    for (let i = 0; i < 200; i++) {
      const o = pick(options)
      let data: Buffer
      if (o === Opt.INFO && rnd() < 0.6) data = encodeGoData(pick(['', 'nope']), [randInt(5), randInt(5)])
      else if (o === Opt.LIST && rnd() < 0.6) data = Buffer.alloc(0)
      else data = randomBytes(randInt(3) === 0 ? 0 : randInt(100))
      parts.push(encodeOption(o, data))
      sent.push(o)
    }
    await c.sendRagged(Buffer.concat(parts))
    const finals: number[] = []
    const t0 = Date.now()
    for (;;) {
      const buf = c.received()
      finals.length = 0
      let p = GREETING_SIZE
      while (p + OPTION_REPLY_HEADER_SIZE <= buf.length) {
        const h = decodeOptionReplyHeader(buf, p)
        assert.ok(h, `an option reply magic at byte ${p}`)
        if (p + OPTION_REPLY_HEADER_SIZE + h.length > buf.length) break
        if (h.type === Rep.ACK) assert.equal(h.length, 0, 'an ACK carries no data (qemu refuses it otherwise)')
        if (h.type === Rep.ACK || isRepError(h.type)) finals.push(h.option)
        else {
          assert.ok(h.type === Rep.SERVER || h.type === Rep.INFO, `reply type ${h.type}`)
          assert.ok(h.option === Opt.LIST || h.option === Opt.INFO, `option ${h.option} got reply ${h.type}`)
        }
        p += OPTION_REPLY_HEADER_SIZE + h.length
      }
      if (finals.length >= sent.length || Date.now() - t0 > 10_000) break
      await sleep(10)
    }
    assert.deepEqual(finals, sent)
    assert.equal(c.closed, false)
    c.s.write(encodeOption(Opt.ABORT))
    assert.ok(await waitClosed(c), 'ABORT closes')
    await serverStillServes()
  })

  /**
   * The errno the spec (and the server's documented order) gives a request before the
   * backend sees it; then the backend's injected fault, for a request that reaches it.
   */
  function expectedErrno(type: number, flags: number, offset: bigint, length: number, readOnly: boolean): number {
    const handled: number[] = [Cmd.READ, Cmd.WRITE, Cmd.FLUSH, Cmd.TRIM, Cmd.WRITE_ZEROES]
    if (!handled.includes(type)) return Errno.EINVAL
    if (flags & ~(type === Cmd.WRITE_ZEROES ? CmdFlag.FUA | CmdFlag.NO_HOLE : CmdFlag.FUA)) return Errno.EINVAL
    if (type === Cmd.FLUSH) return 0
    const past = offset + BigInt(length) > BigInt(SIZE)
    if (type === Cmd.READ) {
      if (past || length > BLOCK_MAX) return Errno.EINVAL
    } else {
      if (readOnly) return Errno.EPERM
      if (past) return Errno.ENOSPC
      if (type === Cmd.WRITE && length > BLOCK_MAX) return Errno.EINVAL
    }
    return length === 0 ? 0 : MemBackend.fault(Number(offset))
  }

  async function fuzzRequests(path: string, be: MemBackend, batches: number): Promise<void> {
    const c = await RawClient.connect(path)
    assert.equal(c.size, BigInt(SIZE))
    assert.equal((c.flags & TxFlag.READ_ONLY) !== 0, be.readOnly)
    const model = Buffer.from(be.data)
    const stats = {requests: 0, errors: new Map<number, number>(), reads: 0, writes: 0, bytes: 0}
    const randOffset = (): bigint => {
      const r = rnd()
      if (r < 0.25) return BigInt(SIZE - randInt(64 * KiB)) // near the end
      if (r < 0.35) return BigInt(SIZE + randInt(64 * KiB)) // past it
      if (r < 0.37) return pick([2n ** 53n - 1n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n, BigInt(Number.MAX_SAFE_INTEGER - randInt(1000))])
      if (r < 0.47) return BigInt(FAULT_START + randInt(FAULT_END - FAULT_START + 8192) - 4096) // around the faults
      return BigInt(randInt(SIZE))
    }
    const randLength = (type: number): number => {
      const r = rnd()
      if (r < 0.08) return 0
      if (r < 0.5) return 1 + randInt(4096)
      if (r < 0.9) return randInt(256 * KiB)
      if (r < 0.97) return randInt(MiB)
      if (type === Cmd.WRITE) return r < 0.985 ? BLOCK_MAX + 1 + randInt(4096) : randInt(2 * MiB) // payloads are sent
      return pick([BLOCK_MAX, BLOCK_MAX + 1, 0xffffffff, randInt(2 ** 32)])
    }
    for (let batch = 0; batch < batches; batch++) {
      // Requests in flight together. Those that touch data do not overlap, so each has one
      // right answer whatever order the server runs them in.
      const n = 1 + randInt(pick([4, 16, 40]))
      const taken: Array<[bigint, bigint]> = []
      const overlaps = (o: bigint, l: bigint): boolean => taken.some(([a, b]) => o < b && a < o + l)
      const replies: Array<Promise<void>> = []
      const apply: Array<() => void> = []
      const bytes: Buffer[] = []
      for (let i = 0; i < n; i++) {
        const type = rnd() < 0.9 ? pick([Cmd.READ, Cmd.READ, Cmd.READ, Cmd.WRITE, Cmd.WRITE, Cmd.WRITE, Cmd.WRITE_ZEROES, Cmd.TRIM, Cmd.FLUSH]) : pick([Cmd.CACHE, Cmd.BLOCK_STATUS, 8, 100, 0xffff])
        let offset = randOffset()
        let length = randLength(type)
        const flags = rnd() < 0.85 ? pick([0, 0, CmdFlag.FUA, type === Cmd.WRITE_ZEROES ? CmdFlag.NO_HOLE : 0]) : pick([CmdFlag.NO_HOLE, CmdFlag.FUA | CmdFlag.NO_HOLE, CmdFlag.DF, CmdFlag.REQ_ONE, CmdFlag.FAST_ZERO, randInt(0x10000)])
        let expected = expectedErrno(type, flags, offset, length, be.readOnly)
        const touches = (type === Cmd.READ || type === Cmd.WRITE || type === Cmd.WRITE_ZEROES || type === Cmd.TRIM) && length > 0 && offset + BigInt(length) <= BigInt(SIZE)
        if (touches && overlaps(offset, BigInt(length))) {
          // Make it harmless instead: a zero-length request at 0.
          offset = 0n
          length = 0
          expected = expectedErrno(type, flags, offset, length, be.readOnly)
        } else if (touches) taken.push([offset, offset + BigInt(length)])
        const payload = type === Cmd.WRITE ? (length > 4 * MiB ? Buffer.alloc(length, 0xee) : randomBytes(length)) : undefined
        const cookie = (BigInt(randInt(2 ** 31)) << 33n) | BigInt(stats.requests)
        stats.requests++
        const o = Number(offset)
        const l = length
        const snapshot = type === Cmd.READ && expected === 0 && length > 0 ? Buffer.from(model.subarray(o, o + l)) : undefined
        const what = `type ${type} flags 0x${flags.toString(16)} at ${offset}+${length}`
        replies.push(
          c.expect(cookie, type, length).then((r) => {
            assert.equal(r.error, expected, `${what}: errno ${r.error}, expected ${expected}`)
            stats.errors.set(r.error, (stats.errors.get(r.error) ?? 0) + 1)
            if (snapshot) {
              stats.reads++
              assert.ok(r.data && snapshot.equals(r.data), `${what}: other data than the model's`)
            }
          }),
        )
        bytes.push(encodeRequest({flags, type, cookie, offset, length}))
        if (payload) {
          bytes.push(payload)
          stats.bytes += payload.length
        }
        if (expected === 0 && length > 0 && type === Cmd.WRITE) {
          stats.writes++
          apply.push(() => payload!.copy(model, o))
        }
        if (expected === 0 && length > 0 && (type === Cmd.WRITE_ZEROES || type === Cmd.TRIM)) apply.push(() => model.fill(0, o, o + l))
      }
      await c.sendRagged(Buffer.concat(bytes))
      const all = Promise.all(replies)
      const timedOut = await Promise.race([all.then(() => false), sleep(20_000).then(() => true)])
      assert.equal(timedOut, false, `batch ${batch}: no reply for cookies ${c.pendingCookies().join(', ')}`)
      await all
      for (const f of apply) f()
      assert.equal(c.inflight, 0)
      assert.deepEqual(c.problems, [])
      assert.equal(c.closed, false, `batch ${batch}: the server closed a well-formed connection`)
    }
    assert.ok(be.data.equals(model), 'the export holds what the model says')
    const errs = [...stats.errors].map(([e, k]) => `${e}:${k}`).join(' ')
    console.log(`nbdFuzz ${be.readOnly ? 'read-only' : 'writable'}: ${stats.requests} requests (${stats.reads} reads checked, ${stats.writes} writes, ${(stats.bytes / MiB).toFixed(0)} MiB sent; replies by errno ${errs})`)
    await c.disconnect()
  }

  test('random valid-looking requests: one reply each, right cookie, right errno, right data', async () => {
    await fuzzRequests(sock, backend, 250)
    await serverStillServes()
  })

  test('random requests on a read-only export: EPERM for every write, reads intact', async () => {
    await fuzzRequests(roSock, roBackend, 50)
  })

  test('many connections at once, each with requests in flight, then gone', async () => {
    const clients = await Promise.all(Array.from({length: 20}, () => RawClient.connect(sock)))
    const work = clients.map(async (c, i) => {
      const base = FAULT_END + i * 64 * KiB
      const data = randomBytes(64 * KiB)
      const rs = [c.request(Cmd.WRITE, base, data.length, {payload: data, flags: CmdFlag.FUA}), c.request(Cmd.FLUSH, 0, 0)]
      for (const r of await Promise.all(rs)) assert.equal(r.error, 0)
      const back = await c.request(Cmd.READ, base, data.length)
      assert.deepEqual(back.data, data)
      if (i % 2) await c.disconnect()
      else c.s.destroy() // EOF without DISC, as fio does
    })
    await Promise.all(work)
    await serverStillServes()
  })

  test('the server kept serving: nothing internal went wrong, connections were cleaned up', async () => {
    assert.deepEqual(
      logs.filter((m) => /internal error/.test(m)),
      [],
    )
    // Backend failures were logged (the injected ones), with their NBD errno.
    assert.ok(logs.some((m) => /failed: EIO: injected/.test(m)))
    for (let i = 0; i < 100 && server.connections + roServer.connections > 0; i++) await sleep(20)
    assert.equal(server.connections, 0)
    assert.equal(roServer.connections, 0)
  })
})
