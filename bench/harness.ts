/**
 * Small pieces the benchmark rows share: running commands, timing them, alternating a pair,
 * and medians. Ratios, not absolute times, are what hold on a shared machine.
 */
import {execFileSync, spawn, spawnSync, type ChildProcess} from 'node:child_process'
import {existsSync, mkdirSync, rmSync, statSync} from 'node:fs'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {mulberry32} from '../src/io/prng.js'

export const repo = join(fileURLToPath(import.meta.url), '..', '..', '..')
export const bin = join(repo, 'bin', 'run.js')

export function have(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0
}

export function sh(cmd: string, env: NodeJS.ProcessEnv = process.env): string {
  return execFileSync('sh', ['-c', cmd], {env, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, stdio: ['ignore', 'pipe', 'pipe']})
}

/** Wall time of a shell command, in seconds. */
export function timed(cmd: string, env?: NodeJS.ProcessEnv): number {
  const t0 = performance.now()
  sh(cmd, env)
  return (performance.now() - t0) / 1000
}

/** Wall time of a shell command, in seconds, and its stdout. */
export function timedOutput(cmd: string, env?: NodeJS.ProcessEnv): {seconds: number; stdout: string} {
  const t0 = performance.now()
  const stdout = sh(cmd, env)
  return {seconds: (performance.now() - t0) / 1000, stdout}
}

/**
 * Flush dirty pages and drop caches between runs, so one run's writeback does not tax the
 * next and every run reads its data cold; then warm the programs again (node, clonectl's
 * modules, the peers' binaries). Without that every clonectl run paid ~0.5 s of reading the
 * node binary and oclif from disk after a drop (measured with strace), while nbdcopy's small
 * binary cost nothing: that measures the disk under the tools, not the copy.
 * A drop that fails (not root, a container) is counted: the row it happened in says so.
 */
export function settle(): void {
  const drop = spawnSync('sh', ['-c', 'sync && echo 3 > /proc/sys/vm/drop_caches && sleep 0.3'])
  if (drop.status !== 0) cacheDrops.failed++
  cacheDrops.tried++
  spawnSync('sh', ['-c', `cat "$(command -v node)" > /dev/null; find ${repo}/dist ${repo}/node_modules ${repo}/package.json ${repo}/oclif.manifest.json -type f -exec cat {} + > /dev/null 2>&1; node ${bin} --help > /dev/null 2>&1; for t in nbdcopy qemu-nbd qemu-io nbdkit fio dd; do command -v $t > /dev/null && $t --version > /dev/null 2>&1; done; sleep 0.2`])
}

/** Cache drops tried and failed so far (a row compares the counts before and after it). */
export const cacheDrops = {tried: 0, failed: 0}

let random = mulberry32(1)
/** Seed the order of every comparison (the bench prints the seed it used). */
export function seedOrder(seed: number): void {
  random = mulberry32(seed)
}

/** The names in a random order (Fisher-Yates). */
export function shuffled<T>(xs: readonly T[]): T[] {
  const out = [...xs]
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1))
    ;[out[i], out[j]] = [out[j], out[i]]
  }
  return out
}

export interface Stats {
  min: number
  median: number
  max: number
  samples: number[]
}

export function stats(xs: number[]): Stats {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
  return {min: s[0], median: m, max: s[s.length - 1], samples: xs}
}

/**
 * Run every contender once per round, `n` rounds, in a new random order each round (so no
 * tool always runs first, or always right after another's writeback): setup before each
 * run, then (unless `cold: false`) a cache settle, then the timed run. Returns each
 * contender's Stats.
 */
export function compare<K extends string>(n: number, contenders: Record<K, () => number>, setup?: (which: K) => void, opts: {cold?: boolean} = {}): Record<K, Stats> {
  const names = Object.keys(contenders) as K[]
  const out = Object.fromEntries(names.map((k) => [k, [] as number[]])) as Record<K, number[]>
  for (let i = 0; i < n; i++)
    for (const k of shuffled(names)) {
      setup?.(k)
      if (opts.cold ?? true) settle()
      out[k].push(contenders[k]())
    }
  return Object.fromEntries(names.map((k) => [k, stats(out[k])])) as Record<K, Stats>
}

/** compare() for contenders that run asynchronously (servers, fio); no cache settle. */
export async function compareAsync<K extends string, R>(n: number, contenders: Record<K, () => Promise<R>>): Promise<Record<K, R[]>> {
  const names = Object.keys(contenders) as K[]
  const out = Object.fromEntries(names.map((k) => [k, [] as R[]])) as Record<K, R[]>
  for (let i = 0; i < n; i++)
    for (const k of shuffled(names)) {
      out[k].push(await contenders[k]())
    }
  return out
}

export function allocatedBytes(path: string): number {
  return statSync(path).blocks * 512
}

export function freshDir(base: string, name: string): string {
  const d = join(base, name)
  rmSync(d, {recursive: true, force: true})
  mkdirSync(d, {recursive: true})
  return d
}

export function clonectl(stateDir: string, args: string): string {
  return sh(`node ${bin} ${args} --state-dir=${stateDir}`)
}

/** Start a background process; resolves when `ready(path)` exists. */
export async function background(cmd: string, readyPath: string, env: NodeJS.ProcessEnv = process.env): Promise<ChildProcess> {
  const p = spawn('sh', ['-c', `exec ${cmd}`], {env, stdio: ['ignore', 'ignore', 'pipe']})
  let err = ''
  p.stderr?.on('data', (d: Buffer) => {
    err += d.toString()
  })
  for (let i = 0; i < 200; i++) {
    if (existsSync(readyPath)) return p
    if (p.exitCode !== null) throw new Error(`${cmd} exited early: ${err}`)
    await new Promise((r) => setTimeout(r, 50))
  }
  p.kill('SIGKILL')
  throw new Error(`${cmd} did not become ready: ${err}`)
}

export async function stop(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null) return
  const done = new Promise((r) => p.once('exit', r))
  p.kill('SIGTERM')
  await Promise.race([done, new Promise((r) => setTimeout(r, 15_000))])
  if (p.exitCode === null) p.kill('SIGKILL')
}

export interface FioResult {
  readIops: number
  writeIops: number
  readMBps: number
  writeMBps: number
  readP99us?: number
}

type FioOptions = {rw: string; bs: string; iodepth: number; size: string; runtime: number; extra?: string}

function fioCommand(uri: string, opts: FioOptions): string {
  return `fio --name=b --ioengine=nbd --uri='${uri}' --rw=${opts.rw} --bs=${opts.bs} --iodepth=${opts.iodepth} --size=${opts.size} --time_based --runtime=${opts.runtime} --output-format=json ${opts.extra ?? ''} 2>/dev/null`
}

/** fio over NBD; returns IOPS and bandwidth from its JSON output. */
export function fio(uri: string, opts: FioOptions): FioResult {
  return parseFio(sh(fioCommand(uri, opts)))
}

/** The same, without blocking the event loop (so progress can be sampled meanwhile). */
export function fioAsync(uri: string, opts: FioOptions): Promise<FioResult> {
  return new Promise((resolve, reject) => {
    const p = spawn('sh', ['-c', fioCommand(uri, opts)], {stdio: ['ignore', 'pipe', 'ignore']})
    let out = ''
    p.stdout?.on('data', (d: Buffer) => (out += d.toString()))
    p.on('error', reject)
    p.on('exit', () => {
      try {
        resolve(parseFio(out))
      } catch (error) {
        reject(error)
      }
    })
  })
}

function parseFio(out: string): FioResult {
  const j = JSON.parse(out.slice(out.indexOf('{'))) as {jobs: Array<{read: {iops: number; bw_bytes: number; clat_ns?: {percentile?: Record<string, number>}}; write: {iops: number; bw_bytes: number}}>}
  const job = j.jobs[0]
  return {
    readIops: job.read.iops,
    writeIops: job.write.iops,
    readMBps: job.read.bw_bytes / 1e6,
    writeMBps: job.write.bw_bytes / 1e6,
    readP99us: job.read.clat_ns?.percentile?.['99.000000'] ? job.read.clat_ns.percentile['99.000000'] / 1000 : undefined,
  }
}

/**
 * A minimal QMP client (QEMU's JSON monitor) over a unix socket: waits for the greeting,
 * negotiates capabilities, then runs commands one at a time, skipping events.
 */
export class Qmp {
  private buf = ''
  private waiting?: {resolve: (v: Record<string, unknown>) => void; reject: (e: Error) => void}
  private readonly lines: Array<Record<string, unknown>> = []

  private constructor(private readonly sock: import('node:net').Socket) {
    sock.on('data', (d: Buffer) => {
      this.buf += d.toString()
      let i
      while ((i = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, i).trim()
        this.buf = this.buf.slice(i + 1)
        if (!line) continue
        const msg = JSON.parse(line) as Record<string, unknown>
        if ('event' in msg) continue
        if (this.waiting) {
          const w = this.waiting
          this.waiting = undefined
          w.resolve(msg)
        } else this.lines.push(msg)
      }
    })
    sock.on('error', (err) => this.waiting?.reject(err))
  }

  static async connect(path: string): Promise<Qmp> {
    const {createConnection} = await import('node:net')
    const sock = createConnection(path)
    await new Promise<void>((resolve, reject) => {
      sock.once('connect', resolve)
      sock.once('error', reject)
    })
    const q = new Qmp(sock)
    await q.next() // greeting
    await q.execute('qmp_capabilities')
    return q
  }

  private next(): Promise<Record<string, unknown>> {
    const ready = this.lines.shift()
    if (ready) return Promise.resolve(ready)
    return new Promise((resolve, reject) => {
      this.waiting = {resolve, reject}
    })
  }

  async execute(cmd: string, args?: Record<string, unknown>): Promise<unknown> {
    this.sock.write(`${JSON.stringify(args ? {execute: cmd, arguments: args} : {execute: cmd})}\n`)
    const r = await this.next()
    if ('error' in r) throw new Error(`QMP ${cmd}: ${JSON.stringify(r.error)}`)
    return r.return
  }

  close(): void {
    this.sock.destroy()
  }
}
