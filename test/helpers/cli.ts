/**
 * Run the real CLI (bin/run.js, i.e. the built dist/commands) as a child process, with its
 * own state directory, and capture stdout, stderr and the exit status. Also: a background
 * spawn for the SIGKILL/SIGINT tests, and small file helpers (sha256, cmp, sparse images).
 */
import {spawn, spawnSync, type ChildProcess} from 'node:child_process'
import {createHash} from 'node:crypto'
import {createReadStream} from 'node:fs'
import * as fsp from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join, resolve} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'
import {fileURLToPath} from 'node:url'

export const KiB = 1024
export const MiB = 1024 * KiB
export const GiB = 1024 * MiB

/** The repository root (dist/test/helpers → ../../..). */
export const repoRoot = resolve(fileURLToPath(new URL('.', import.meta.url)), '../../..')
export const clonectlBin = join(repoRoot, 'bin', 'run.js')

export const isRoot = process.getuid?.() === 0
export function has(cmd: string, ...args: string[]): boolean {
  const r = spawnSync(cmd, args, {stdio: 'ignore'})
  return r.error === undefined && r.status !== null
}

/**
 * A --json result as tests read it: by path, whatever the command. Its typed contract is the
 * command's result type and JSON Schema (issue 17 item 4), not this.
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- tests read --json output by path
export type JsonOut = any

export interface CliResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
  /** stdout parsed as JSON, when it is JSON. */
  json?: JsonOut
  ms: number
}

export interface CliOptions {
  /** Extra environment (merged over process.env, after the defaults below). */
  env?: NodeJS.ProcessEnv
  input?: string
  timeoutMs?: number
  /** Working directory of the child (default: this process's). */
  cwd?: string
}

/**
 * The environment of every clonectl child: its own state directory, no colour, and no
 * terminal (stdin is a pipe), so confirmation prompts refuse and progress is plain lines.
 */
export function cliEnv(stateDir: string, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  return {...process.env, CLONECTL_STATE_DIR: stateDir, NO_COLOR: '1', FORCE_COLOR: '0', ...extra}
}

function collect(child: ChildProcess, t0: number, timeoutMs: number): Promise<CliResult> {
  let stdout = ''
  let stderr = ''
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (stdout += d))
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d))
  return new Promise((res, rej) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      rej(new Error(`clonectl timed out after ${timeoutMs} ms\nstdout: ${stdout}\nstderr: ${stderr}`))
    }, timeoutMs)
    child.on('error', (e) => {
      clearTimeout(timer)
      rej(e)
    })
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      let json: unknown
      try {
        json = stdout.trim() ? JSON.parse(stdout) : undefined
      } catch {
        json = undefined
      }
      res({code, signal, stdout, stderr, json, ms: Date.now() - t0})
    })
  })
}

/** A clonectl bound to one state directory. */
export class Cli {
  constructor(readonly stateDir: string) {}

  /** Run `clonectl ARGS…` to completion. */
  run(args: string[], opts: CliOptions = {}): Promise<CliResult> {
    const t0 = Date.now()
    const child = spawn(process.execPath, [clonectlBin, ...args], {env: cliEnv(this.stateDir, opts.env), cwd: opts.cwd, stdio: ['pipe', 'pipe', 'pipe']})
    child.stdin?.end(opts.input ?? '')
    return collect(child, t0, opts.timeoutMs ?? 120_000)
  }

  /** Run and insist on exit status `code` (default 0); the failure message shows everything. */
  async ok(args: string[], code = 0, opts: CliOptions = {}): Promise<CliResult> {
    const r = await this.run(args, opts)
    if (r.code !== code) throw new Error(`clonectl ${args.join(' ')}: exit ${r.code} (signal ${r.signal}), expected ${code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`)
    return r
  }

  /** Run with --json and return the parsed stdout (exit status `code`). */
  async json(args: string[], code = 0, opts: CliOptions = {}): Promise<JsonOut> {
    const r = await this.ok([...args, '--json'], code, opts)
    if (r.json === undefined) throw new Error(`clonectl ${args.join(' ')} --json: stdout is not JSON: ${r.stdout}`)
    return r.json
  }

  /** Start `clonectl ARGS…` in the background; `done` resolves when it exits. */
  spawnBackground(args: string[], opts: CliOptions = {}): Background {
    const t0 = Date.now()
    const child = spawn(process.execPath, [clonectlBin, ...args], {env: cliEnv(this.stateDir, opts.env), stdio: ['pipe', 'pipe', 'pipe']})
    child.stdin?.end()
    const b = new Background(child, collect(child, t0, opts.timeoutMs ?? 300_000))
    return b
  }

  /** status --json of one group. */
  async status(group: string): Promise<JsonOut> {
    const s = await this.json(['status', group])
    return Array.isArray(s) ? s[0] : s
  }
}

export class Background {
  stderrSoFar = ''
  constructor(
    readonly child: ChildProcess,
    readonly done: Promise<CliResult>,
  ) {
    child.stderr?.on('data', (d: Buffer | string) => (this.stderrSoFar += d.toString()))
  }

  get pid(): number {
    return this.child.pid as number
  }

  kill(sig: NodeJS.Signals = 'SIGKILL'): void {
    this.child.kill(sig)
  }

  /** Wait until `pred` holds (polling), or throw after timeoutMs. */
  async until(pred: () => boolean | Promise<boolean>, what: string, timeoutMs = 60_000): Promise<void> {
    const end = Date.now() + timeoutMs
    let exited = false
    void this.done.then(
      () => (exited = true),
      () => (exited = true),
    )
    for (;;) {
      if (await pred()) return
      if (exited) throw new Error(`process exited before ${what}; stderr: ${this.stderrSoFar}`)
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}; stderr: ${this.stderrSoFar}`)
      await sleep(25)
    }
  }
}

export async function tempDir(prefix: string): Promise<string> {
  return fsp.mkdtemp(join(tmpdir(), `clonectl-${prefix}-`))
}

export async function sha256(path: string): Promise<string> {
  const h = createHash('sha256')
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer)
  return h.digest('hex')
}

/** `cmp` exit status: 0 identical, 1 different (with its message). */
export function cmp(a: string, b: string): {same: boolean; output: string} {
  const r = spawnSync('cmp', [a, b], {encoding: 'utf8'})
  if (r.error) throw r.error
  if (r.status !== 0 && r.status !== 1) throw new Error(`cmp ${a} ${b}: ${r.stderr}`)
  return {same: r.status === 0, output: `${r.stdout}${r.stderr}`}
}

/** Write `data` at `offset` into an existing file without truncating it (as dd conv=notrunc). */
export async function pwrite(path: string, offset: number, data: Uint8Array): Promise<void> {
  const fh = await fsp.open(path, 'r+')
  try {
    await fh.write(data, 0, data.length, offset)
  } finally {
    await fh.close()
  }
}

/** A sparse file of `size` bytes with `chunks` of random data written at `offsets`. */
export async function sparseImage(path: string, size: number, writes: Array<{offset: number; data: Uint8Array}> = []): Promise<void> {
  const fh = await fsp.open(path, 'wx')
  try {
    await fh.truncate(size)
    for (const w of writes) await fh.write(w.data, 0, w.data.length, w.offset)
  } finally {
    await fh.close()
  }
}

/** A file of `size` bytes of pseudo-random data (fast: one random block repeated, varied). */
export async function randomImage(path: string, size: number, seed = 1): Promise<void> {
  const block = Buffer.alloc(MiB)
  let x = (seed * 2654435761) >>> 0 || 1
  for (let i = 0; i < block.length; i += 4) {
    x ^= x << 13
    x ^= x >>> 17
    x ^= x << 5
    block.writeUInt32LE(x >>> 0, i)
  }
  const fh = await fsp.open(path, 'wx')
  try {
    for (let off = 0; off < size; off += MiB) {
      const n = Math.min(MiB, size - off)
      // Vary each MiB so no two extents are equal.
      block.writeUInt32LE(off / MiB, 0)
      block.writeUInt32LE(seed, 8)
      await fh.write(block, 0, n, off)
    }
  } finally {
    await fh.close()
  }
}

/** Allocated bytes of a file (st_blocks × 512). */
export async function allocated(path: string): Promise<number> {
  return (await fsp.stat(path)).blocks * 512
}
