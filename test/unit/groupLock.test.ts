import assert from 'node:assert/strict'
import {type ChildProcess, spawn} from 'node:child_process'
import {once} from 'node:events'
import {mkdir, mkdtemp, readdir, readFile, rm, stat, utimes, writeFile} from 'node:fs/promises'
import {hostname, tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, test} from 'node:test'
import {setTimeout as sleep} from 'node:timers/promises'
import {ExitCode, LockHeldError} from '../../src/errors/errors.js'
import {nodeFs} from '../../src/io/NodeDurableFs.js'
import {type AcquireOptions, GroupLock, type HolderInfo} from '../../src/store/GroupLock.js'
import {GroupStore} from '../../src/store/GroupStore.js'
import {ensureStateDir} from '../../src/store/stateDir.js'

const temps: string[] = []
after(async () => {
  for (const d of temps) await rm(d, {recursive: true, force: true})
})

async function tempGroupDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'clonectl-lock-'))
  temps.push(dir)
  const g = join(dir, 'db1')
  await mkdir(g, {mode: 0o700})
  return g
}

function opts(groupDir: string, extra: Partial<AcquireOptions> = {}): AcquireOptions {
  return {
    groupDir,
    group: 'db1',
    command: 'clonectl clone sync db1 c1',
    onCompromised: (err) => assert.fail(`lock compromised: ${err.message}`),
    ...extra,
  }
}

/** A pid that is certainly not running: a child that has already exited. */
async function deadPid(): Promise<number> {
  const child = spawn(process.execPath, ['-e', ''], {stdio: 'ignore'})
  await once(child, 'exit')
  assert.ok(child.pid)
  return child.pid
}

/** Leave a lock as a SIGKILLed holder would: the lock directory and its holder file. */
async function abandonedLock(groupDir: string, holder: Partial<HolderInfo> = {}): Promise<HolderInfo> {
  const h: HolderInfo = {pid: await deadPid(), command: 'clonectl restore db1 c1', startedAt: '2026-11-23T05:40:00Z', hostname: hostname(), ...holder}
  await mkdir(GroupLock.lockPath(groupDir))
  await writeFile(GroupLock.holderPath(groupDir), JSON.stringify(h))
  return h
}

const moduleUrl = new URL('../../src/store/GroupLock.js', import.meta.url).href

/**
 * A child process that tries to take the lock (fail fast) and, if it gets it, holds it for
 * holdMs, then prints one JSON line: {ok, t0, t1, takeover} or {ok: false, code}.
 */
const childScript = `
const [url, groupDir, holdMs, command] = process.argv.slice(1)
const {GroupLock} = await import(url)
let takeover = null
try {
  const lock = await GroupLock.acquire({groupDir, group: 'db1', command, onCompromised: (e) => { console.log(JSON.stringify({ok: false, code: 'COMPROMISED', message: e.message})); process.exit(3) }, onStaleTakeover: (h) => { takeover = h }})
  const t0 = Date.now()
  console.log(JSON.stringify({ok: true, event: 'locked', pid: process.pid}))
  await new Promise((r) => setTimeout(r, Number(holdMs)))
  const t1 = Date.now()
  await lock.release()
  console.log(JSON.stringify({ok: true, event: 'released', t0, t1, takeover}))
} catch (e) {
  console.log(JSON.stringify({ok: false, code: e.code, message: e.message}))
}
`

interface ChildLine {
  ok: boolean
  event?: 'locked' | 'released'
  pid?: number
  t0?: number
  t1?: number
  takeover?: HolderInfo | null
  code?: string
  message?: string
}

function lockChild(groupDir: string, holdMs: number, command = 'clonectl restore db1 c1'): {child: ChildProcess; lines: ChildLine[]; next: () => Promise<ChildLine>} {
  const child = spawn(process.execPath, ['--input-type=module', '-e', childScript, moduleUrl, groupDir, String(holdMs), command], {stdio: ['ignore', 'pipe', 'inherit']})
  const lines: ChildLine[] = []
  const waiters: Array<(l: ChildLine) => void> = []
  let buf = ''
  child.stdout!.setEncoding('utf8')
  child.stdout!.on('data', (d: string) => {
    buf += d
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      const l = JSON.parse(buf.slice(0, i)) as ChildLine
      buf = buf.slice(i + 1)
      lines.push(l)
      waiters.shift()?.(l)
    }
  })
  let read = 0
  const next = (): Promise<ChildLine> => (read < lines.length ? Promise.resolve(lines[read++]!) : new Promise((r) => waiters.push((l) => (read++, r(l)))))
  return {child, lines, next}
}

test('given a held lock, when a second invocation acquires without --wait, then it fails fast naming pid and command', async () => {
  const dir = await tempGroupDir()
  const first = await GroupLock.acquire(opts(dir))
  assert.equal(first.holder.pid, process.pid)
  assert.equal(first.holder.command, 'clonectl clone sync db1 c1')
  const t = Date.now()
  await assert.rejects(GroupLock.acquire(opts(dir, {command: 'clonectl restore db1 c1'})), (e: unknown) => {
    assert.ok(e instanceof LockHeldError)
    assert.equal(e.exitCode, ExitCode.lockHeld)
    assert.equal(e.message, `group db1 is locked by pid ${process.pid} (clonectl clone sync db1 c1) since ${first.holder.startedAt}`)
    assert.match(first.holder.startedAt, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/)
    assert.equal(e.fix, 'wait for it to finish, or run the command again with --wait (until it is free) or --wait SECONDS')
    return true
  })
  assert.ok(Date.now() - t < 1000, 'fails fast')
  await first.release()
})

test('given a lock held by another process, then inspect names it and acquire fails fast', async () => {
  const dir = await tempGroupDir()
  const {child, next} = lockChild(dir, 60_000, 'clonectl serve db1')
  try {
    const locked = await next()
    assert.equal(locked.event, 'locked')
    const h = await GroupLock.inspect(dir)
    assert.equal(h?.pid, child.pid)
    assert.equal(h?.command, 'clonectl serve db1')
    await assert.rejects(GroupLock.acquire(opts(dir)), new RegExp(`^LockHeldError: group db1 is locked by pid ${child.pid} \\(clonectl serve db1\\) since `))
  } finally {
    child.kill('SIGKILL')
    await once(child, 'exit')
  }
})

test('given a held lock, when a second invocation waits, then it gets the lock once the first releases', async () => {
  const dir = await tempGroupDir()
  const first = await GroupLock.acquire(opts(dir))
  const t = Date.now()
  setTimeout(() => void first.release(), 500)
  const second = await GroupLock.acquire(opts(dir, {command: 'clonectl restore db1 c1', waitSeconds: 10}))
  const waited = Date.now() - t
  assert.ok(waited >= 450 && waited < 5000, `waited ${waited} ms`)
  assert.equal((await GroupLock.inspect(dir))?.command, 'clonectl restore db1 c1')
  await second.release()
})

test('given a held lock, when the wait runs out, then LockHeldError says how long it waited', async () => {
  const dir = await tempGroupDir()
  const first = await GroupLock.acquire(opts(dir))
  const t = Date.now()
  await assert.rejects(GroupLock.acquire(opts(dir, {waitSeconds: 0.4})), /is locked by pid \d+ \(clonectl clone sync db1 c1\) since .*; waited 0 s$/)
  assert.ok(Date.now() - t >= 390)
  await first.release()
  await assert.rejects(GroupLock.acquire(opts(dir, {waitSeconds: -1})), RangeError)
})

test('given a holder killed with SIGKILL, when the next invocation acquires, then it takes the lock over at once and says so', async () => {
  const dir = await tempGroupDir()
  const {child, next} = lockChild(dir, 60_000)
  assert.equal((await next()).event, 'locked')
  child.kill('SIGKILL')
  await once(child, 'exit')
  // The killed process left its lock behind, fresh (proper-lockfile alone would wait 60 s).
  assert.ok((await stat(GroupLock.lockPath(dir))).isDirectory())
  assert.equal(await GroupLock.inspect(dir), undefined, 'a dead holder does not count')

  const taken: HolderInfo[] = []
  const t = Date.now()
  const lock = await GroupLock.acquire(opts(dir, {onStaleTakeover: (h) => taken.push(h)}))
  assert.ok(Date.now() - t < 2000, 'prompt')
  assert.equal(taken.length, 1)
  assert.equal(taken[0]!.pid, child.pid)
  assert.equal(taken[0]!.command, 'clonectl restore db1 c1')
  assert.equal((await GroupLock.inspect(dir))?.pid, process.pid)
  await lock.release()
})

test('given an abandoned lock, when several processes take it over at once, then never two hold it together', async () => {
  const dir = await tempGroupDir()
  const dead = await abandonedLock(dir)
  const children = Array.from({length: 6}, () => lockChild(dir, 1500))
  const results = await Promise.all(
    children.map(async ({child, lines}) => {
      await once(child, 'exit')
      return lines
    }),
  )
  const held = results.map((ls) => ls.find((l) => l.event === 'released')).filter((l): l is ChildLine => l !== undefined)
  const refused = results.filter((ls) => ls.some((l) => !l.ok))
  assert.ok(held.length >= 1, 'someone took it over')
  assert.equal(held.length + refused.length, children.length)
  for (const r of refused) assert.equal(r[0]!.code, 'LOCK_HELD', r[0]!.message)
  const takeovers = held.filter((l) => l.takeover)
  assert.equal(takeovers.length, 1, 'exactly one took it over')
  assert.equal(takeovers[0]!.takeover!.pid, dead.pid)
  const spans = held.map((l) => [l.t0!, l.t1!] as const).sort((a, b) => a[0] - b[0])
  for (let i = 1; i < spans.length; i++) assert.ok(spans[i]![0] >= spans[i - 1]![1], `holders overlap: ${JSON.stringify(spans)}`)
  assert.equal(await GroupLock.inspect(dir), undefined)
})

test('given a lock whose holder is on another host, then it is not taken over while fresh', async () => {
  const dir = await tempGroupDir()
  const h = await abandonedLock(dir, {hostname: 'other-host.example'})
  assert.deepEqual(await GroupLock.inspect(dir), h)
  await assert.rejects(GroupLock.acquire(opts(dir)), new RegExp(`locked by pid ${h.pid} on other-host\\.example \\(clonectl restore db1 c1\\)`))
})

test('given a lock older than the stale threshold, then it is taken over whoever held it', async () => {
  const dir = await tempGroupDir()
  await abandonedLock(dir, {hostname: 'other-host.example'})
  const old = new Date(Date.now() - 120_000)
  await utimes(GroupLock.lockPath(dir), old, old)
  assert.equal(await GroupLock.inspect(dir), undefined)
  const taken: HolderInfo[] = []
  const lock = await GroupLock.acquire(opts(dir, {onStaleTakeover: (h) => taken.push(h)}))
  assert.equal(taken[0]?.hostname, 'other-host.example')
  await lock.release()
})

test('given a fresh lock with no holder file and someone in the gate, then it counts as held (pid 0); acquire waits for the gate, then takes the lock over', async () => {
  const dir = await tempGroupDir()
  await mkdir(GroupLock.lockPath(dir))
  await mkdir(GroupLock.gatePath(dir))
  assert.equal((await GroupLock.inspect(dir))?.pid, 0, 'an acquire or release is in progress')
  // The one in the gate finishes (here: is gone) a moment later.
  setTimeout(() => void rm(GroupLock.gatePath(dir), {recursive: true}), 200)
  const took: HolderInfo[] = []
  const lock = await GroupLock.acquire(opts(dir, {onStaleTakeover: (h) => took.push(h)}))
  assert.equal(took.length, 1)
  assert.match(took[0].command, /killed while taking or releasing the lock/)
  assert.equal((await GroupLock.inspect(dir))?.pid, process.pid)
  await lock.release()
})

test('given a fresh lock with no holder file and no one in the gate (its maker killed between mkdir and the holder file), then status sees it free and acquire takes it over at once', async () => {
  const dir = await tempGroupDir()
  await mkdir(GroupLock.lockPath(dir))
  assert.equal(await GroupLock.inspect(dir), undefined)
  const took: HolderInfo[] = []
  const t0 = Date.now()
  const lock = await GroupLock.acquire(opts(dir, {onStaleTakeover: (h) => took.push(h)}))
  assert.ok(Date.now() - t0 < 5000, 'at once, not after STALE_MS')
  assert.equal(took.length, 1)
  await lock.release()
  assert.deepEqual(await readdir(dir), [], 'release leaves neither lock, holder file nor gate')
})

test('given a held lock, when released, then the holder file and the lock are gone and release is idempotent', async () => {
  const dir = await tempGroupDir()
  const lock = await GroupLock.acquire(opts(dir))
  const h = JSON.parse(await readFile(GroupLock.holderPath(dir), 'utf8')) as HolderInfo
  assert.equal(h.pid, process.pid)
  assert.equal(h.hostname, hostname())
  assert.deepEqual((await readdir(dir)).sort(), ['lock', 'lock.holder.json'])
  await lock.release()
  await lock.release()
  assert.deepEqual(await readdir(dir), [])
  assert.equal(await GroupLock.inspect(dir), undefined)
})

test('given a group destroyed under its own lock, when the lock is released, then the group directory is gone', async () => {
  const base = await mkdtemp(join(tmpdir(), 'clonectl-lock-'))
  temps.push(base)
  await ensureStateDir(nodeFs, base)
  const store = new GroupStore(nodeFs, base)
  await store.create({formatVersion: 1, name: 'db1', extentSize: 65536, createdAt: new Date().toISOString(), source: {path: '/vol/src', fingerprint: {kind: 'file', size: 4096}}, clones: []})
  const lock = await GroupLock.acquire(opts(store.groupDir('db1')))
  await store.destroy('db1')
  assert.equal(await store.exists('db1'), false)
  assert.deepEqual(await store.list(), [])
  await lock.release()
  await assert.rejects(stat(store.groupDir('db1')), /ENOENT/)
})

test('given no group directory, then acquire is a NotFoundError', async () => {
  const dir = await tempGroupDir()
  await assert.rejects(GroupLock.acquire(opts(join(dir, 'missing'))), (e: unknown) => (e as {code?: string}).code === 'NOT_FOUND')
})

test('given a lock taken from under its holder, then the holder is told within UPDATE_MS and its release leaves the new lock alone', async () => {
  const dir = await tempGroupDir()
  let lost: Error | undefined
  const a = await GroupLock.acquire(opts(dir, {onCompromised: (e) => (lost = e)}))
  // Someone removes the lock behind A's back (an admin's rm -r), and B takes it.
  await rm(GroupLock.lockPath(dir), {recursive: true})
  await rm(GroupLock.holderPath(dir))
  // proper-lockfile tells locks apart by the lock directory's mtime, which the kernel stamps
  // from a coarse clock (a jiffy, 1–10 ms): a B made in the same tick as A would look like A's
  // to A, and B would be the one told it lost the lock (seen once in CI-like runs).
  await sleep(50)
  const b = await GroupLock.acquire(opts(dir, {command: 'clonectl serve db1'}))
  for (let i = 0; i < 130 && !lost; i++) await sleep(100)
  assert.ok(lost, 'A was told it lost the lock')
  assert.match(lost.message, /Unable to update lock within the stale threshold/)
  await a.release()
  assert.equal((await GroupLock.inspect(dir))?.command, 'clonectl serve db1')
  await b.release()
  assert.deepEqual(await readdir(dir), [])
})

/**
 * A zombie: a child of a shell that exec's `sleep` and so never reaps it. The child is killed
 * only once the shell has become `sleep` (a shell would reap it).
 */
async function zombiePid(): Promise<{pid: number; parent: ChildProcess}> {
  const parent = spawn('sh', ['-c', 'sleep 600 & echo $!; exec sleep 600'], {stdio: ['ignore', 'pipe', 'ignore']})
  const [line] = (await once(parent.stdout!, 'data')) as [Buffer]
  const pid = Number(line.toString().trim())
  const state = async (p: number): Promise<string> => {
    const stat = await readFile(`/proc/${p}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
  }
  while ((await readFile(`/proc/${parent.pid}/cmdline`, 'utf8')).split('\0')[0] !== 'sleep') await new Promise((r) => setImmediate(r))
  process.kill(pid, 'SIGKILL')
  while ((await state(pid)) !== 'Z') await new Promise((r) => setImmediate(r))
  return {pid, parent}
}

test('given a holder killed and not yet reaped by its parent (a zombie), then the lock is taken over at once', async () => {
  const dir = await tempGroupDir()
  const {pid, parent} = await zombiePid()
  try {
    process.kill(pid, 0) // kill(pid, 0) alone calls it alive
    await abandonedLock(dir, {pid})
    assert.equal(await GroupLock.inspect(dir), undefined, 'a zombie holder does not count')
    const taken: HolderInfo[] = []
    const lock = await GroupLock.acquire(opts(dir, {onStaleTakeover: (h) => taken.push(h)}))
    assert.equal(taken[0]?.pid, pid)
    await lock.release()
  } finally {
    parent.kill('SIGKILL')
  }
})

test('given a holder file of an earlier boot, or of a pid now used by another process, then the lock is taken over at once', async () => {
  const boot = (await readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim()
  for (const extra of [{bootId: '00000000-0000-0000-0000-000000000000'}, {bootId: boot, pidStart: '1'}]) {
    const dir = await tempGroupDir()
    // pid: this very process, alive, but not the one that wrote the holder file.
    await abandonedLock(dir, {pid: process.pid, ...extra} as Partial<HolderInfo>)
    assert.equal(await GroupLock.inspect(dir), undefined, JSON.stringify(extra))
    const lock = await GroupLock.acquire(opts(dir))
    await lock.release()
  }
})

test('given a live holder, then its own holder file (boot id and start time recorded) keeps the lock held', async () => {
  const dir = await tempGroupDir()
  const lock = await GroupLock.acquire(opts(dir))
  const h = JSON.parse(await readFile(GroupLock.holderPath(dir), 'utf8')) as {bootId?: string; pidStart?: string}
  assert.ok(h.bootId && h.pidStart, 'recorded')
  assert.equal((await GroupLock.inspect(dir))?.pid, process.pid)
  await assert.rejects(GroupLock.acquire(opts(dir)), LockHeldError)
  await lock.release()
})
