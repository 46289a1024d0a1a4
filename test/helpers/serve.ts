/**
 * Helpers for the interop tests: run real programs without blocking the event loop (the
 * NBD server under test may live in this very process), start `clonectl serve` in the
 * background and wait for its sockets, and a small NBD client of our own (raw requests,
 * replies matched by cookie) for the fuzz and torture tests.
 */
import {spawn, spawnSync, type ChildProcess} from 'node:child_process'
import {createHash} from 'node:crypto'
import {createReadStream} from 'node:fs'
import * as fsp from 'node:fs/promises'
import {connect, type Socket} from 'node:net'
import {tmpdir} from 'node:os'
import {join, resolve} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'
import {fileURLToPath} from 'node:url'
import {mulberry32} from '../../src/io/prng.js'
import {ByteQueue} from '../../src/nbd/ByteQueue.js'
import {
  ClientFlag,
  Cmd,
  NBDMAGIC,
  IHAVEOPT,
  Opt,
  OPT_REPLY_MAGIC,
  Rep,
  SIMPLE_REPLY_MAGIC,
  encodeGoData,
  encodeOption,
  encodeRequest,
} from '../../src/nbd/protocol.js'

export const KiB = 1024
export const MiB = 1024 * 1024
export const GiB = 1024 * MiB

/** The repository root (dist/test/helpers → ../../..). */
export const repoRoot = resolve(fileURLToPath(new URL('.', import.meta.url)), '../../..')
export const clonectlBin = join(repoRoot, 'bin', 'run.js')

export const has = (cmd: string, ...args: string[]): boolean => {
  const r = spawnSync(cmd, args, {stdio: 'ignore'})
  return r.error === undefined && r.status !== null
}
export const isRoot = process.getuid?.() === 0

export const nbdUri = (socket: string): string => `nbd+unix:///?socket=${socket}`

export async function tempDir(prefix: string): Promise<string> {
  return fsp.mkdtemp(join(tmpdir(), `clonectl-${prefix}-`))
}

export interface RunResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
  ms: number
}

/** Run a program to completion, asynchronously (never blocks the event loop). */
export function run(cmd: string, args: string[], opts: {env?: NodeJS.ProcessEnv; input?: string; timeoutMs?: number; cwd?: string} = {}): Promise<RunResult> {
  const t0 = performance.now()
  return new Promise((resolvePromise, reject) => {
    const p = spawn(cmd, args, {env: opts.env ?? process.env, cwd: opts.cwd, stdio: ['pipe', 'pipe', 'pipe']})
    let stdout = ''
    let stderr = ''
    p.stdout.on('data', (b: Buffer) => (stdout += b.toString('utf8')))
    p.stderr.on('data', (b: Buffer) => (stderr += b.toString('utf8')))
    const timer = opts.timeoutMs
      ? setTimeout(() => {
          stderr += `\n[killed after ${opts.timeoutMs} ms]`
          p.kill('SIGKILL')
        }, opts.timeoutMs)
      : undefined
    p.on('error', reject)
    p.on('close', (code, signal) => {
      if (timer) clearTimeout(timer)
      resolvePromise({code, signal, stdout, stderr, ms: performance.now() - t0})
    })
    p.stdin.on('error', () => undefined) // EPIPE when the program exits without reading it
    p.stdin.end(opts.input ?? '')
  })
}

/** Run and insist on exit 0; the error carries the command and its output. */
export async function runOk(cmd: string, args: string[], opts: Parameters<typeof run>[2] = {}): Promise<RunResult> {
  const r = await run(cmd, args, opts)
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code ?? r.signal}\nstdout: ${r.stdout.slice(-4000)}\nstderr: ${r.stderr.slice(-4000)}`)
  return r
}

/** `clonectl ARGS` with --state-dir. */
export function clonectl(stateDir: string, args: string[], opts: Parameters<typeof run>[2] = {}): Promise<RunResult> {
  return run(process.execPath, [clonectlBin, ...args, '--state-dir', stateDir], {timeoutMs: 120_000, ...opts})
}

export async function clonectlOk(stateDir: string, args: string[], opts: Parameters<typeof run>[2] = {}): Promise<RunResult> {
  const r = await clonectl(stateDir, args, opts)
  if (r.code !== 0) throw new Error(`clonectl ${args.join(' ')} exited ${r.code ?? r.signal}\nstdout: ${r.stdout.slice(-4000)}\nstderr: ${r.stderr.slice(-4000)}`)
  return r
}

/** `clonectl status G --json`, the group's entry. */
export async function statusJson(stateDir: string, group: string): Promise<{clones: Array<{name: string; state: string; dirtyExtents: number}>; operation?: unknown; server?: unknown; [k: string]: unknown}> {
  const r = await clonectlOk(stateDir, ['status', group, '--json'])
  const v = JSON.parse(r.stdout) as unknown
  const g = (Array.isArray(v) ? v[0] : v) as {clones: Array<{name: string; state: string; dirtyExtents: number}>}
  return g
}

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256')
  for await (const chunk of createReadStream(path, {highWaterMark: 4 * MiB})) h.update(chunk as Buffer)
  return h.digest('hex')
}

/** Byte-for-byte equality of two files (first n bytes when given). */
export async function sameContent(a: string, b: string, n?: number): Promise<boolean> {
  const fa = await fsp.open(a, 'r')
  const fb = await fsp.open(b, 'r')
  try {
    const size = n ?? Math.max((await fa.stat()).size, (await fb.stat()).size)
    const ba = Buffer.alloc(4 * MiB)
    const bb = Buffer.alloc(4 * MiB)
    for (let off = 0; off < size; off += ba.length) {
      const len = Math.min(ba.length, size - off)
      const ra = await fa.read(ba, 0, len, off)
      const rb = await fb.read(bb, 0, len, off)
      if (ra.bytesRead !== rb.bytesRead || ba.compare(bb, 0, rb.bytesRead, 0, ra.bytesRead) !== 0) return false
    }
    return true
  } finally {
    await fa.close()
    await fb.close()
  }
}

/** Connect to a unix socket and close at once: true when someone listens. */
export function socketLive(path: string): Promise<boolean> {
  return new Promise((r) => {
    const c = connect(path)
    c.once('connect', () => {
      c.destroy()
      r(true)
    })
    c.once('error', () => r(false))
  })
}

export interface Served {
  proc: ChildProcess
  socket: string
  uri: string
  stderr: () => string
  exited: Promise<{code: number | null; signal: NodeJS.Signals | null}>
  /** Send a signal and wait for the exit. */
  stop: (signal?: NodeJS.Signals) => Promise<{code: number | null; signal: NodeJS.Signals | null}>
}

/**
 * `clonectl serve GROUP` in the background; resolves once its NBD socket accepts (the
 * control socket is up before it). Rejects with its stderr if it exits first.
 */
export async function startServe(stateDir: string, group: string, extra: string[] = [], timeoutMs = 30_000): Promise<Served> {
  const socket = join(stateDir, 'groups', group, 'nbd.sock')
  const proc = spawn(process.execPath, [clonectlBin, 'serve', group, '--state-dir', stateDir, ...extra], {stdio: ['ignore', 'pipe', 'pipe']})
  let err = ''
  proc.stderr!.on('data', (b: Buffer) => (err += b.toString('utf8')))
  proc.stdout!.on('data', (b: Buffer) => (err += b.toString('utf8')))
  let exit: {code: number | null; signal: NodeJS.Signals | null} | undefined
  const exited = new Promise<{code: number | null; signal: NodeJS.Signals | null}>((r) =>
    proc.on('exit', (code, signal) => {
      exit = {code, signal}
      r(exit)
    }),
  )
  const t0 = Date.now()
  while (!/serving group/.test(err)) {
    if (exit) throw new Error(`clonectl serve ${group} exited ${exit.code ?? exit.signal} before serving:\n${err}`)
    if (Date.now() - t0 > timeoutMs) {
      proc.kill('SIGKILL')
      throw new Error(`clonectl serve ${group} did not start in ${timeoutMs} ms:\n${err}`)
    }
    await sleep(20)
  }
  return {
    proc,
    socket,
    uri: nbdUri(socket),
    stderr: () => err,
    exited,
    stop: async (signal = 'SIGTERM') => {
      if (!exit) proc.kill(signal)
      return exited
    },
  }
}

// ---------------------------------------------------------------------------------------
// A small NBD client: fixed newstyle + OPT_GO, simple replies, many requests in flight.

export interface NbdReply {
  error: number
  cookie: bigint
  data?: Buffer
}

/**
 * One connection. request() sends a request (with payload for WRITE) and resolves with its
 * reply; replies are matched by cookie, and anything unexpected (an unknown cookie, a bad
 * magic, a second reply) is recorded in `protocolErrors`.
 */
export class NbdTestClient {
  size = 0
  flags = 0
  readonly protocolErrors: string[] = []
  private readonly q = new ByteQueue()
  private readonly waiting = new Map<bigint, {type: number; length: number; resolve: (r: NbdReply) => void; reject: (e: Error) => void}>()
  private nextCookie = 1n
  private closedError?: Error
  private current?: {cookie: bigint; error: number; need: number}
  private handshake?: () => void
  private inHandshake = true

  private constructor(readonly s: Socket) {}

  static async connect(path: string): Promise<NbdTestClient> {
    const s = connect(path)
    await new Promise<void>((r, j) => {
      s.once('connect', () => r())
      s.once('error', j)
    })
    const c = new NbdTestClient(s)
    s.on('data', (b: Buffer) => c.onData(b))
    s.on('error', (e) => c.fail(e))
    s.on('close', () => c.fail(new Error('connection closed')))
    await c.doHandshake()
    return c
  }

  private async readExactly(n: number): Promise<Buffer> {
    while (this.q.length < n) {
      if (this.closedError) throw this.closedError
      await new Promise<void>((r) => (this.handshake = r))
    }
    return this.q.take(n)
  }

  private async doHandshake(): Promise<void> {
    const g = await this.readExactly(18)
    if (g.readBigUInt64BE(0) !== NBDMAGIC || g.readBigUInt64BE(8) !== IHAVEOPT) throw new Error('bad greeting')
    const cf = Buffer.alloc(4)
    cf.writeUInt32BE(ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES)
    this.s.write(cf)
    this.s.write(encodeOption(Opt.GO, encodeGoData('', [])))
    for (;;) {
      const h = await this.readExactly(20)
      if (h.readBigUInt64BE(0) !== OPT_REPLY_MAGIC) throw new Error('bad option reply magic')
      const type = h.readUInt32BE(12)
      const data = await this.readExactly(h.readUInt32BE(16))
      if (type === Rep.ACK) break
      if (type === Rep.INFO && data.readUInt16BE(0) === 0) {
        this.size = Number(data.readBigUInt64BE(2))
        this.flags = data.readUInt16BE(10)
      } else if (type !== Rep.INFO) throw new Error(`OPT_GO failed: reply type 0x${type.toString(16)}`)
    }
    this.handshake = undefined
    this.inHandshake = false
    if (this.q.length) this.onData(Buffer.alloc(0))
  }

  private onData(b: Buffer): void {
    this.q.push(b)
    if (this.inHandshake) {
      const h = this.handshake
      this.handshake = undefined
      h?.()
      return
    }
    for (;;) {
      if (!this.current) {
        if (this.q.length < 16) return
        const h = this.q.take(16)
        if (h.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) {
          this.protocolErrors.push(`bad reply magic 0x${h.readUInt32BE(0).toString(16)}`)
          this.s.destroy()
          return
        }
        const cookie = h.readBigUInt64BE(8)
        const error = h.readUInt32BE(4)
        const w = this.waiting.get(cookie)
        if (!w) {
          this.protocolErrors.push(`reply with unknown cookie ${cookie}`)
          continue
        }
        this.current = {cookie, error, need: w.type === Cmd.READ && error === 0 ? w.length : 0}
      }
      const cur = this.current
      if (this.q.length < cur.need) return
      const data = cur.need ? this.q.take(cur.need) : undefined
      this.current = undefined
      const w = this.waiting.get(cur.cookie)!
      this.waiting.delete(cur.cookie)
      w.resolve({error: cur.error, cookie: cur.cookie, data: data && Buffer.from(data)})
    }
  }

  private fail(e: Error): void {
    this.closedError ??= e
    if (this.handshake) {
      const h = this.handshake
      this.handshake = undefined
      h()
    }
    for (const w of this.waiting.values()) w.reject(e)
    this.waiting.clear()
  }

  /** The connection failed or closed. */
  get closed(): boolean {
    return this.closedError !== undefined
  }

  get inflight(): number {
    return this.waiting.size
  }

  /** Send one request; resolves with its reply. */
  request(type: number, offset: bigint | number, length: number, opts: {flags?: number; payload?: Buffer; cookie?: bigint} = {}): Promise<NbdReply> {
    if (this.closedError) return Promise.reject(this.closedError)
    const cookie = opts.cookie ?? this.nextCookie++
    const p = new Promise<NbdReply>((resolvePromise, reject) => this.waiting.set(cookie, {type, length, resolve: resolvePromise, reject}))
    this.s.write(encodeRequest({flags: opts.flags ?? 0, type, cookie, offset: BigInt(offset), length}))
    if (opts.payload) this.s.write(opts.payload)
    return p
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const r = await this.request(Cmd.READ, offset, length)
    if (r.error) throw Object.assign(new Error(`NBD read at ${offset}+${length}: error ${r.error}`), {nbdError: r.error})
    return r.data!
  }

  async write(offset: number, data: Buffer, fua = false): Promise<void> {
    const r = await this.request(Cmd.WRITE, offset, data.length, {payload: data, flags: fua ? 1 : 0})
    if (r.error) throw Object.assign(new Error(`NBD write at ${offset}+${data.length}: error ${r.error}`), {nbdError: r.error})
  }

  async flush(): Promise<void> {
    const r = await this.request(Cmd.FLUSH, 0, 0)
    if (r.error) throw Object.assign(new Error(`NBD flush: error ${r.error}`), {nbdError: r.error})
  }

  /** NBD_CMD_DISC, then wait for the server to close. */
  async disconnect(): Promise<void> {
    if (this.closedError) return
    const closed = new Promise<void>((r) => this.s.once('close', () => r()))
    this.s.write(encodeRequest({flags: 0, type: Cmd.DISC, cookie: 0n, offset: 0n, length: 0}))
    await Promise.race([closed, sleep(5000)])
    this.s.destroy()
  }

  destroy(): void {
    this.s.destroy()
  }
}

/** fio with the nbd engine; returns its parsed JSON and the total of errors it reports. */
export async function fioNbd(
  uri: string,
  args: string[],
  timeoutMs = 120_000,
): Promise<{errors: number; iops: {read: number; write: number}; ioBytes: {read: number; write: number}; json: unknown; stderr: string; code: number | null}> {
  // cwd: fio leaves a *-verify.state file behind in it.
  const r = await run('fio', ['--name=clonectl', '--ioengine=nbd', `--uri=${uri}`, '--output-format=json', ...args], {timeoutMs, cwd: tmpdir()})
  let json: {jobs?: Array<{error: number; read: {iops: number; io_bytes: number}; write: {iops: number; io_bytes: number}}>} = {}
  try {
    json = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as typeof json
  } catch {
    // fio failed before its report; the exit code and stderr tell.
  }
  const jobs = json.jobs ?? []
  // No report (fio died, or printed something else) is an error too, never a quiet pass.
  const errors = jobs.reduce((n, j) => n + (j.error ?? 0), 0) + (r.code === 0 ? 0 : 1) + (/verify|bad magic|crc32c/i.test(r.stderr) ? 1 : 0) + (jobs.length === 0 ? 1 : 0)
  return {
    errors,
    iops: {read: jobs.reduce((n, j) => n + j.read.iops, 0), write: jobs.reduce((n, j) => n + j.write.iops, 0)},
    ioBytes: {read: jobs.reduce((n, j) => n + j.read.io_bytes, 0), write: jobs.reduce((n, j) => n + j.write.io_bytes, 0)},
    json,
    stderr: r.stderr + r.stdout.slice(0, r.stdout.indexOf('{') >= 0 ? r.stdout.indexOf('{') : undefined),
    code: r.code,
  }
}

/** A deterministic PRNG (mulberry32) for seeded tests. */
export const prng = mulberry32

export {sleep}

/**
 * Fail, naming the tool, when an interop test's program is missing (`reason` is what a
 * `has()` check left: false when all is there). CI installs them (.ci/run), so a missing
 * one is a broken setup to see, never a test to skip quietly.
 */
export function needTool(reason: string | false | undefined): void {
  if (reason) throw new Error(`missing tool: ${reason}; install it (.ci/run lists the packages: qemu-utils, libnbd-bin, nbdfuse, fio, nbdkit, e2fsprogs, fuse3, tmux, openssl, man-db)`)
}
