/**
 * Simulated power loss with the NBD server in the model (issue 12). Hosts reach the source
 * through the real NbdServer (a unix socket, NbdClient) in front of HostIO on a MemoryFs,
 * so a FLUSH reply and a FUA write's reply are the promises INV-4 checks. The blind spots
 * of powerLoss.test.ts are covered here:
 *
 * - every fs op is a crash point (not a sample): at each, before the op takes effect, the
 *   crash states of that instant are taken and checked against INV-1..3 on the durable
 *   state; every few ops some are also recovered, finished and checked against INV-4 and
 *   the model;
 * - every FLUSH / FUA reply and every timer checkpoint is a crash point too: the durable
 *   state right then must keep what was acknowledged, after recovery;
 * - the checkpoint timer fires while a data write is on its way to the source (the hook
 *   holds that write until the checkpoint is done): checkpoints overlap host writes;
 * - a datasync takes a few turns of the event loop, as a disk does, so a reply sent too
 *   early overtakes it, and a request can arrive while a map commit is in flight; then a
 *   second write to the same extent is issued (straight to the backend) to meet it;
 * - "cod": the sync engine is paused while the host works, so host reads (and partial
 *   writes) restore extents by copy on demand alone, and flushes commit those copies.
 *
 * The run is not halted at a crash point (the states are snapshots), so one run per seed
 * covers every point; socket timing makes runs differ slightly, which only adds cases.
 */
import assert from 'node:assert/strict'
import {mkdtemp, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {describe, test} from 'node:test'
import {HostIO} from '../../src/engine/HostIO.js'
import {RestoreSession} from '../../src/engine/Restore.js'
import {CloneGroup, mapFileName, protectedMapFile} from '../../src/group/CloneGroup.js'
import {recoverStale} from '../../src/group/GroupAdmin.js'
import {enumerateCrashStates, MemoryFs} from '../support/MemoryFs.js'
import {mulberry32} from '../../src/io/prng.js'
import {ExtentBitmap} from '../../src/map/ExtentBitmap.js'
import {PersistentMap} from '../../src/map/PersistentMap.js'
import {NbdClient} from '../../src/nbd/NbdClient.js'
import {NbdServer} from '../../src/nbd/NbdServer.js'
import {buildGroup, clonePath, contextOn, fillPattern, SRC} from '../helpers/memGroup.js'

const X = 4096
const EXTENTS = 24
const SIZE = X * EXTENTS
const DAMAGE = 0xee // pre-restore data: never visible under P, nor after a restore
const TUNING = {chunkBytes: X, parallel: 2}
const cloneData = fillPattern(EXTENTS, X, (e) => 0x40 + e)
const SEEDS = Number(process.env.CLONECTL_CRASH_NBD_SEEDS ?? 4)
/** Crash states taken at each fs op (INV-1..3), and how often some of them are recovered. */
const STATES_PER_OP = 8
const RECOVER_EVERY = 3

type Kind = 'protected' | 'cod'

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

interface Point {
  states: Array<{fs: MemoryFs; label: string}>
  promises: Promises
  /** Recover and check INV-4 for this many of the states (the first ones: durable, all, …). */
  recover: number
}

const overlaps = (a: {off: number; len: number}, b: {off: number; len: number}): boolean => a.off < b.off + b.len && b.off < a.off + a.len

/** Run one scenario to its end, taking crash points as it goes. */
async function runScenario(kind: Kind, seed: number, sockDir: string): Promise<{points: Point[]; ops: number; stats: Record<string, number>}> {
  const rand = mulberry32(seed)
  const hookRand = mulberry32(seed * 7 + 1)
  const m = await buildGroup({extents: EXTENTS, source: cloneData, clones: ['c', 'k2']})
  const fs = m.fs
  {
    const g0 = await CloneGroup.open(m.ctx, 'g', {writable: true})
    const h0 = new HostIO(g0)
    for (let e = 0; e < EXTENTS; e++) if (rand() < 0.6) await h0.write(e * X, Buffer.alloc(X, DAMAGE), false)
    await h0.flush()
    await g0.close()
  }
  const model = Buffer.from(cloneData)
  const promises = new Promises(model)
  const points: Point[] = []
  const stats = {flushAcks: 0, fuaAcks: 0, timerCheckpoints: 0, sameExtentWrites: 0, readsChecked: 0}
  /** The durable state now, as a crash point whose promises are those of this instant. */
  const ackPoint = (label: string): void => {
    points.push({states: [{fs: fs.crash({kind: 'durable'}), label}], promises: promises.snapshot(), recover: 1})
  }

  const g = await CloneGroup.open(m.ctx, 'g', {writable: true, readOnlyClones: ['c']})
  await g.beginSession('crash test')
  const host = new HostIO(g)
  const s = await host.gate.exclusive(() => RestoreSession.start(g, {clone: 'c', protected: true, command: 'crash', tuning: TUNING}))
  host.restore = s
  if (kind === 'cod') s.engine.pause()
  const work = s.run().then(async (done) => {
    if (done) await host.gate.exclusive(() => s.finish())
  })
  work.catch(() => undefined) // awaited below
  const logs: string[] = []
  const server = new NbdServer(host, {log: (msg) => logs.push(msg)})
  const sock = join(sockDir, `s${seed}-${kind}.sock`)
  await server.listenUnix(sock)
  const client = await NbdClient.connect(`nbd+unix:///?socket=${sock}`)

  // Host writes in flight (acknowledged ones leave), for the same-extent injection.
  const inflight = new Set<{off: number; len: number}>()
  let batchWrites: Array<{off: number; len: number}> = []
  const extra: Array<Promise<void>> = []

  const hostWrite = async (off: number, data: Buffer, fua: boolean, direct = false): Promise<void> => {
    const w = {off, len: data.length}
    inflight.add(w)
    batchWrites.push(w)
    promises.unflushed.push({off, data})
    try {
      if (direct) await host.write(off, data, fua)
      else await client.write(off, data, {fua})
    } finally {
      inflight.delete(w)
    }
    data.copy(model, off)
    if (fua) {
      data.copy(promises.durable, off)
      if (!direct) {
        stats.fuaAcks++
        ackPoint(`after the FUA reply to a write at ${off}+${data.length}`)
      }
    }
  }
  const hostFlush = async (): Promise<void> => {
    await client.flush()
    promises.durable = Buffer.from(model)
    promises.unflushed = []
    stats.flushAcks++
    ackPoint('after a FLUSH reply')
  }

  /** The crash states of fs now (taken whole before anything else runs). */
  const crashStates = (at: string, n: number): Array<{fs: MemoryFs; label: string}> =>
    [...enumerateCrashStates(fs, {subsets: 3, seed: Math.floor(seed * 7919 + n * 2), torn: true, max: STATES_PER_OP})].map((st) => ({fs: fs.crash(st.choice), label: `${at} ${st.label}`}))
  let opNo = 0
  fs.onOp = async (op) => {
    const n = ++opNo
    // Power fails just before this op: the crash states of this instant.
    points.push({states: crashStates(`op ${n} (${op.kind} ${op.path})`, n), promises: promises.snapshot(), recover: n % RECOVER_EVERY === 0 ? 2 : 0})
    if (op.kind === 'datasync') {
      // A delta map commit in flight: a second write to the extent of a write waiting for it.
      if (op.path.endsWith('.map') && inflight.size > 0 && hookRand() < 0.7) {
        const w = [...inflight][Math.floor(hookRand() * inflight.size)]
        const e = Math.floor(w.off / X)
        const free: Array<{off: number; len: number}> = []
        for (let off = e * X; off < (e + 1) * X; off += 512) if (![...inflight, ...batchWrites].some((o) => overlaps(o, {off, len: 512}))) free.push({off, len: 512})
        if (free.length > 0) {
          const f = free[Math.floor(hookRand() * free.length)]
          stats.sameExtentWrites++
          extra.push(hostWrite(f.off, Buffer.alloc(f.len, 201 + Math.floor(hookRand() * 30)), false, true)) // 201..230: never DAMAGE
        }
      }
      // A disk is not instant: the datasync takes a few turns of the event loop.
      for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r))
      // Power fails while the datasync is still running: what was issued meanwhile is pending too.
      points.push({states: crashStates(`during op ${n} (datasync ${op.path})`, n + 0.5), promises: promises.snapshot(), recover: 0})
    }
    if (op.kind === 'write' && op.path === SRC && hookRand() < 0.3) {
      // The checkpoint timer fires while this data write is on its way: it runs whole first.
      stats.timerCheckpoints++
      await g.checkpoint().catch(() => undefined)
      points.push({states: [{fs: fs.crash({kind: 'durable'}), label: `after a timer checkpoint (op ${n})`}], promises: promises.snapshot(), recover: 1})
    }
  }

  const readRatio = kind === 'cod' ? 0.45 : 0.25
  for (let i = 0; i < 24; i++) {
    if (rand() < 0.15) {
      await hostFlush()
      continue
    }
    batchWrites = []
    const batch: Array<Promise<unknown>> = []
    const reads: Array<{off: number; len: number; p: Promise<Buffer>}> = []
    const n = 1 + Math.floor(rand() * 3)
    for (let j = 0; j < n; j++) {
      let off: number
      let len: number
      if (rand() < 0.3) {
        // A whole extent: no COD, P set at once (recipe 3).
        off = Math.floor(rand() * EXTENTS) * X
        len = X
      } else {
        off = Math.floor(rand() * (SIZE - 1))
        len = Math.min(SIZE - off, 1 + Math.floor(rand() * 2 * X))
      }
      if (rand() < readRatio) {
        const p = client.read(off, len)
        reads.push({off, len, p})
        batch.push(p)
        continue
      }
      if (batchWrites.some((w) => overlaps(w, {off, len}))) continue
      batch.push(hostWrite(off, Buffer.alloc(len, 1 + Math.floor(rand() * 200)), rand() < 0.2))
    }
    await Promise.all(batch)
    await Promise.all(extra.splice(0))
    // A read returns the latest write or the clone's data: check those no write of the batch touched.
    for (const r of reads) {
      if (batchWrites.some((w) => overlaps(w, r))) continue
      assert.ok((await r.p).equals(model.subarray(r.off, r.off + r.len)), `[${kind} seed ${seed}] a host read at ${r.off}+${r.len} returned data that is neither the clone's nor the host's`)
      stats.readsChecked++
    }
  }
  if (kind === 'cod') s.engine.resume()
  await work
  await hostFlush()
  await client.close()
  await server.close()
  await g.close()
  fs.onOp = undefined
  assert.deepEqual(logs.filter((l) => !/disconnect/.test(l)), [], `[${kind} seed ${seed}] the NBD server logged errors`)
  assert.ok(fs.contentOf(SRC).subarray(0, SIZE).equals(model), `[${kind} seed ${seed}] the source is not what the host wrote over the clone`)
  return {points, ops: opNo, stats}
}

function readMap(fs: MemoryFs, file: string, kind: 'delta' | 'protected', operationId?: string): Promise<PersistentMap> {
  return PersistentMap.open(fs, `/state/groups/g/${file}`, {kind, extentSize: X, volumeSize: SIZE, operationId})
}

function differs(a: Buffer, b: Buffer, e: number): boolean {
  return a.compare(b, e * X, (e + 1) * X, e * X, (e + 1) * X) !== 0
}

/** INV-1..3 on a durable state. */
async function checkDurable(fs: MemoryFs, label: string): Promise<void> {
  const rec = await contextOn(fs).store.load('g')
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
      if (differs(src, clone, e)) assert.ok(D.get(e) || (restoring && P?.get(e)), `[${label}] INV-1: extent ${e} of clone ${c.name} differs from the source, unmarked`)
    if (c.name === 'c') assert.ok(clone.equals(cloneData), `[${label}] INV-3: clone c was written`)
  }
  if (P) for (let e = 0; e < EXTENTS; e++) if (P.get(e)) assert.ok(!src.subarray(e * X, (e + 1) * X).includes(DAMAGE), `[${label}] INV-2: P[${e}] set over pre-restore data`)
}

/** Recover as clonectl does (resume the restore, or start it again if it never started durably) and finish. */
async function recover(fs: MemoryFs): Promise<void> {
  const ctx = contextOn(fs)
  const op = (await ctx.store.load('g')).operation
  const g = await CloneGroup.open(ctx, 'g', {writable: true, readOnlyClones: ['c']})
  await recoverStale(g)
  let s: RestoreSession | undefined
  if (op?.kind === 'restore') s = await RestoreSession.resume(g, {tuning: TUNING})
  else if ((await g.src.read(0, SIZE)).includes(DAMAGE)) s = await RestoreSession.start(g, {clone: 'c', protected: true, command: 'again', tuning: TUNING})
  if (s) {
    assert.equal(await s.run(), true)
    await s.finish()
  }
  await g.close()
}

/** INV-4 and the model after recovery: every byte is the flushed value or a later write's; the clone is untouched. */
async function checkFinal(fs: MemoryFs, promises: Promises, label: string): Promise<void> {
  const src = fs.contentOf(SRC).subarray(0, SIZE)
  assert.equal((await contextOn(fs).store.load('g')).operation, undefined, `[${label}] an operation is still recorded after recovery`)
  for (let i = 0; i < SIZE; i++)
    if (!promises.allowed(i, src[i])) assert.fail(`[${label}] INV-4/model: byte ${i} (extent ${Math.floor(i / X)}) is ${src[i]}, neither the flushed value ${promises.durable[i]} nor a later write's`)
  assert.ok(fs.contentOf(clonePath('c')).subarray(0, SIZE).equals(cloneData), `[${label}] the clone changed`)
}

describe('simulated power loss with hosts on the NBD server: every op a crash point, replies are promises (INV-1..4)', () => {
  for (const kind of ['protected', 'cod'] as const) {
    test(`${kind}: every crash point of ${SEEDS} runs keeps INV-1..3; acknowledged FLUSH/FUA and sampled points survive recovery (INV-4)`, async () => {
      const dir = await mkdtemp(join(tmpdir(), 'clonectl-crash-nbd-'))
      const total: Record<string, number> = {points: 0, states: 0, recovered: 0, flushAcks: 0, fuaAcks: 0, timerCheckpoints: 0, sameExtentWrites: 0, readsChecked: 0}
      try {
        for (let seed = 1; seed <= SEEDS; seed++) {
          const {points, stats} = await runScenario(kind, seed, dir)
          for (const [k, v] of Object.entries(stats)) total[k] += v
          for (const p of points) {
            total.points++
            for (const [i, st] of p.states.entries()) {
              const label = `${kind} seed ${seed} ${st.label}`
              await checkDurable(st.fs, label)
              total.states++
              if (i < p.recover) {
                await recover(st.fs)
                await checkFinal(st.fs, p.promises, label)
                total.recovered++
              }
            }
          }
        }
      } finally {
        await rm(dir, {recursive: true, force: true})
      }
      console.log(`${kind}: ${JSON.stringify(total)}`)
      // The model must have reached what it claims to cover.
      assert.ok(total.flushAcks >= SEEDS * 2 && total.fuaAcks >= SEEDS, `too few acknowledged flushes/FUA writes: ${JSON.stringify(total)}`)
      assert.ok(total.timerCheckpoints >= SEEDS && total.sameExtentWrites >= 1 && total.readsChecked >= SEEDS, `a blind spot was not reached: ${JSON.stringify(total)}`)
    })
  }
})
