/**
 * Simulated power loss (DESIGN §7). A scenario runs on a MemoryFs; it is run again and frozen
 * just before its k-th fs operation, for many k; each crash state of that instant (durable
 * only, all, prefixes, all-but-one, random subsets, torn writes) is checked against INV-1..3
 * on the durable state, then recovered the way clonectl recovers (resume the recorded
 * operation, or run the command again), sometimes crashing again during recovery, finished,
 * and checked against INV-4 and the model.
 */
import assert from 'node:assert/strict'
import {describe, test} from 'node:test'
import {ForwardSync} from '../../src/engine/ForwardSync.js'
import {HostIO} from '../../src/engine/HostIO.js'
import {RestoreSession} from '../../src/engine/Restore.js'
import {CloneGroup, mapFileName, protectedMapFile} from '../../src/group/CloneGroup.js'
import {fractureClones, recoverStale} from '../../src/group/GroupAdmin.js'
import {enumerateCrashStates, MemoryFs} from '../support/MemoryFs.js'
import {mulberry32} from '../../src/io/prng.js'
import {ExtentBitmap} from '../../src/map/ExtentBitmap.js'
import {PersistentMap} from '../../src/map/PersistentMap.js'
import {buildGroup, clonePath, contextOn, fillPattern, SRC} from '../helpers/memGroup.js'

const X = 4096
const EXTENTS = 24
const SIZE = X * EXTENTS
const DAMAGE = 0xee // pre-restore data: must never be visible under P, nor after a restore
const TUNING = {chunkBytes: X, parallel: 2}
const cloneData = fillPattern(EXTENTS, X, (e) => 0x40 + e)

type Kind = 'protected' | 'unprotected' | 'forward' | 'fracture'

/** What the host was promised: per byte, the value as of the last acknowledged flush, plus writes not yet flushed. */
class Promises {
  durable: Buffer
  unflushed: Array<{off: number; data: Buffer}> = []
  constructor(base: Buffer) {
    this.durable = Buffer.from(base)
  }
  snapshot(): Promises {
    const p = new Promises(this.durable)
    p.unflushed = [...this.unflushed]
    return p
  }
  allowed(i: number, v: number): boolean {
    if (this.durable[i] === v) return true
    return this.unflushed.some((w) => i >= w.off && i < w.off + w.data.length && w.data[i - w.off] === v)
  }
}

class Frozen extends Error {}

interface Capture {
  states: Array<{fs: MemoryFs; label: string}>
  promises: Promises
}

/**
 * Run scenario `kind` with `seed`; if crashAt is given, freeze before that fs op and return the
 * crash states of that instant. Otherwise return the total fs op count.
 */
async function runScenario(kind: Kind, seed: number, crashAt?: number, statesPerPoint = 24): Promise<{ops: number; capture?: Capture}> {
  const rand = mulberry32(seed)
  const m = await buildGroup({extents: EXTENTS, source: cloneData, clones: kind === 'fracture' || kind === 'forward' ? ['k'] : ['c', 'k2'], mirrored: kind === 'fracture' ? ['k'] : []})
  const fs = m.fs
  // Damage (restore scenarios) through the host path, durably, before the run starts.
  if (kind === 'protected' || kind === 'unprotected') {
    const g0 = await CloneGroup.open(m.ctx, 'g', {writable: true})
    const h0 = new HostIO(g0)
    for (let e = 0; e < EXTENTS; e++) if (rand() < 0.5) await h0.write(e * X, Buffer.alloc(X, DAMAGE), false)
    await h0.flush()
    await g0.close()
  }
  // The model: what the source must end as (the clone for a restore, else the source), plus
  // every acknowledged host write.
  const model = Buffer.from(kind === 'protected' || kind === 'unprotected' ? cloneData : fs.contentOf(SRC).subarray(0, SIZE))
  const promises = new Promises(model)
  const hostWrite = async (host: HostIO, off: number, data: Buffer, fua: boolean): Promise<void> => {
    promises.unflushed.push({off, data})
    await host.write(off, data, fua)
    data.copy(model, off)
    if (fua) data.copy(promises.durable, off)
  }
  const hostFlush = async (host: HostIO): Promise<void> => {
    await host.flush()
    promises.durable = Buffer.from(model)
    promises.unflushed = []
  }
  let capture: Capture | undefined
  const start = fs.opCount
  // Power fails just before op #crashAt: take the crash states of that instant, then make
  // that op and every later one fail, so the run unwinds at once (nothing left running).
  let halted = false
  fs.onOp = () => {
    if (halted) throw new Frozen('power is off')
    if (crashAt === undefined || fs.opCount - start !== crashAt) return
    const states: Array<{fs: MemoryFs; label: string}> = []
    for (const s of enumerateCrashStates(fs, {subsets: 6, seed: seed * 7919 + crashAt, torn: true, max: statesPerPoint})) states.push({fs: fs.crash(s.choice), label: s.label})
    capture = {states, promises: promises.snapshot()}
    halted = true
    throw new Frozen('power is off')
  }
  const body = async (): Promise<void> => {
    const isRestore = kind === 'protected' || kind === 'unprotected'
    const g = await CloneGroup.open(m.ctx, 'g', {writable: true, readOnlyClones: kind === 'protected' ? ['c'] : []})
    await g.beginSession('crash test')
    const host = new HostIO(g)
    let work: Promise<unknown>
    if (isRestore) {
      const s = await host.gate.exclusive(() => RestoreSession.start(g, {clone: 'c', protected: kind === 'protected', command: 'crash', tuning: TUNING}))
      host.restore = s
      work = s.run().then(async (done) => {
        if (done) await host.gate.exclusive(() => s.finish())
      })
      work.catch(() => undefined) // awaited below; handled now, in case the host loop fails first
    } else if (kind === 'forward') {
      // Make k need a sync: a few extents written while fractured, then sync under host writes.
      for (let e = 0; e < EXTENTS; e += 3) await hostWrite(host, e * X, Buffer.alloc(X, 1 + (e % 200)), false)
      await hostFlush(host)
      const f = await ForwardSync.start(g, {clone: 'k', command: 'crash', gate: host.gate})
      work = f instanceof ForwardSync ? f.run() : Promise.resolve()
      work.catch(() => undefined)
    } else {
      // fracture: k mirrored; fracture it in the middle of the writes.
      work = (async () => {
        for (let i = 0; i < 6; i++) await new Promise((r) => setImmediate(r))
        await host.gate.exclusive(() => fractureClones(g, ['k']))
      })()
      work.catch(() => undefined)
    }
    // Host requests in batches of 1–3 in flight at once (as NBD clients issue them), byte
    // ranges disjoint within a batch so the model stays exact; a flush runs alone.
    for (let i = 0; i < 20; i++) {
      if (rand() < 0.15) {
        await hostFlush(host)
        continue
      }
      const batch: Array<Promise<unknown>> = []
      const taken: Array<[number, number]> = []
      const n = 1 + Math.floor(rand() * 3)
      for (let j = 0; j < n; j++) {
        const off = Math.floor(rand() * (SIZE - 1))
        const len = Math.min(SIZE - off, 1 + Math.floor(rand() * 2 * X))
        if (rand() < 0.25) {
          batch.push(host.read(off, len))
          continue
        }
        if (taken.some(([a, b]) => off < b && a < off + len)) continue
        taken.push([off, off + len])
        batch.push(hostWrite(host, off, Buffer.alloc(len, 1 + Math.floor(rand() * 200)), rand() < 0.15))
      }
      await Promise.all(batch)
    }
    await work
    await host.flush()
    await g.close()
  }
  await settle(body(), () => halted, `${kind} seed ${seed} crash at ${crashAt ?? '-'}`)
  fs.onOp = undefined
  return {ops: fs.opCount - start, capture}
}

/**
 * Wait for a run to end: normally, or (once the power is off) with whatever error the halted
 * fs made it fail with. A run that neither ends nor fails within 10 s is a hang: fail.
 */
async function settle(run: Promise<void>, halted: () => boolean, label: string): Promise<void> {
  let timer: NodeJS.Timeout | undefined
  const hang = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`[${label}] the run neither finished nor failed after the power went off`)), 10_000)
  })
  try {
    await Promise.race([run, hang])
  } catch (error) {
    if (!halted() || (error instanceof Error && error.message.includes('neither finished'))) throw error
  } finally {
    clearTimeout(timer)
  }
}

function readMap(fs: MemoryFs, file: string, kind: 'delta' | 'protected', operationId?: string): Promise<PersistentMap> {
  return PersistentMap.open(fs, `/state/groups/g/${file}`, {kind, extentSize: X, volumeSize: SIZE, operationId})
}

function differs(a: Buffer, b: Buffer, e: number): boolean {
  return a.compare(b, e * X, (e + 1) * X, e * X, (e + 1) * X) !== 0
}

/** INV-1..3 on the durable state of a crash. */
async function checkDurable(kind: Kind, fs: MemoryFs, label: string): Promise<void> {
  const ctx = contextOn(fs)
  const rec = await ctx.store.load('g')
  const src = fs.contentOf(SRC).subarray(0, SIZE)
  const op = rec.operation
  let P: ExtentBitmap | undefined
  if (op?.kind === 'restore' && op.protected) {
    const pm = await readMap(fs, protectedMapFile, 'protected', op.id)
    P = pm.bits.clone()
    await pm.close()
  }
  for (const c of rec.clones) {
    const dm = await readMap(fs, mapFileName(c.name), 'delta')
    const D = dm.bits.clone()
    await dm.close()
    const clone = fs.contentOf(clonePath(c.name)).subarray(0, SIZE)
    const restoring = op?.kind === 'restore' && op.clone === c.name
    for (let e = 0; e < EXTENTS; e++)
      if (differs(src, clone, e)) assert.ok(D.get(e) || (restoring && P?.get(e)), `[${kind} ${label}] INV-1: extent ${e} of clone ${c.name} differs from the source, unmarked`)
    if (kind === 'protected' && c.name === 'c') assert.ok(clone.equals(cloneData), `[${kind} ${label}] INV-3: clone c was written`)
  }
  if (P)
    for (let e = 0; e < EXTENTS; e++)
      if (P.get(e)) assert.ok(!src.subarray(e * X, (e + 1) * X).includes(DAMAGE), `[${kind} ${label}] INV-2: P[${e}] set over pre-restore data`)
}

/** Recover as clonectl does, then finish the interrupted work; optionally crash once more inside. */
async function recover(kind: Kind, fs: MemoryFs, crashAgainAt?: number): Promise<MemoryFs> {
  let again: MemoryFs | undefined
  const start = fs.opCount
  fs.onOp = () => {
    if (again) throw new Frozen('power is off again')
    if (crashAgainAt === undefined || fs.opCount - start !== crashAgainAt) return
    again = fs.crash({kind: 'subset', seed: crashAgainAt})
    throw new Frozen('power is off again')
  }
  const body = async (): Promise<void> => {
    const ctx = contextOn(fs)
    const rec = await ctx.store.load('g')
    const op = rec.operation
    const isProt = op?.kind === 'restore' ? op.protected !== false : kind === 'protected'
    const g = await CloneGroup.open(ctx, 'g', {writable: true, readOnlyClones: isProt && (kind === 'protected' || op?.kind === 'restore') ? [op?.clone ?? 'c'] : []})
    await recoverStale(g)
    if (op?.kind === 'restore') {
      const s = await RestoreSession.resume(g, {tuning: TUNING})
      assert.equal(await s.run(), true)
      await s.finish()
    } else if ((kind === 'protected' || kind === 'unprotected') && g.src && (await g.src.read(0, SIZE)).includes(DAMAGE)) {
      // The restore never started durably: the administrator runs it again.
      const s = await RestoreSession.start(g, {clone: 'c', protected: kind === 'protected', command: 'again', tuning: TUNING})
      assert.equal(await s.run(), true)
      await s.finish()
    } else if (kind === 'forward' || kind === 'fracture') {
      const f = await ForwardSync.start(g, {clone: 'k', command: 'again'})
      if (f instanceof ForwardSync) await f.run()
    }
    await g.close()
  }
  await settle(body(), () => again !== undefined, `${kind} recovery`)
  fs.onOp = undefined
  if (again) return recover(kind, again)
  return fs
}

async function checkFinal(kind: Kind, fs: MemoryFs, promises: Promises, label: string): Promise<void> {
  const src = fs.contentOf(SRC).subarray(0, SIZE)
  const ctx = contextOn(fs)
  const rec = await ctx.store.load('g')
  assert.equal(rec.operation, undefined, `[${kind} ${label}] an operation is still recorded after recovery`)
  for (let i = 0; i < SIZE; i++)
    if (!promises.allowed(i, src[i])) assert.fail(`[${kind} ${label}] INV-4/model: byte ${i} (extent ${Math.floor(i / X)}) is ${src[i]}, neither the flushed value ${promises.durable[i]} nor a later write's`)
  if (kind === 'protected') assert.ok(fs.contentOf(clonePath('c')).subarray(0, SIZE).equals(cloneData), `[${kind} ${label}] the clone changed`)
  if (kind === 'unprotected') assert.ok(fs.contentOf(clonePath('c')).subarray(0, SIZE).equals(src), `[${kind} ${label}] source and clone differ after the reverse sync`)
  if (kind === 'forward' || kind === 'fracture') assert.ok(fs.contentOf(clonePath('k')).subarray(0, SIZE).equals(src), `[${kind} ${label}] the clone differs after the sync`)
}

const SEEDS = Number(process.env.CLONECTL_CRASH_SEEDS ?? 8)
const POINTS = Number(process.env.CLONECTL_CRASH_POINTS ?? 20)

describe('simulated power loss at every kind of point, then resume (DESIGN §7)', () => {
  for (const kind of ['protected', 'unprotected', 'forward', 'fracture'] as const) {
    test(`${kind}: ≥ 2,000 crash states keep INV-1..4 and the model`, async () => {
      let states = 0
      for (let seed = 1; seed <= SEEDS; seed++) {
        const {ops} = await runScenario(kind, seed)
        const r = mulberry32(seed * 31)
        const points = new Set<number>()
        // A fracture leaves fewer writes pending per point: take more points of it. A forward
        // sync too, a little: a host write there waits on nothing once its write-intent bits
        // are durable (no await of a commit), so fewer of them are pending at a crash.
        const count = kind === 'fracture' ? Math.ceil(POINTS * 1.4) : kind === 'forward' ? Math.ceil(POINTS * 1.15) : POINTS
        for (let i = 1; i <= count; i++) points.add(Math.max(1, Math.floor((i * ops) / (count + 1)) + Math.floor(r() * 3)))
        for (const k of points) {
          const {capture} = await runScenario(kind, seed, k)
          if (!capture) continue
          for (const [i, s] of capture.states.entries()) {
            const label = `seed ${seed} op ${k}/${ops} ${s.label}`
            await checkDurable(kind, s.fs, label)
            const recovered = await recover(kind, s.fs, i % 5 === 0 ? 3 + (k % 40) : undefined)
            await checkFinal(kind, recovered, capture.promises, `${label}${i % 5 === 0 ? ' (crashed again in recovery)' : ''}`)
            states++
          }
        }
      }
      console.log(`${kind}: ${states} crash states checked`)
      assert.ok(states >= 2000, `only ${states} crash states`)
    })
  }
})
