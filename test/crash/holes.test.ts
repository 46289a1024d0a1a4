/**
 * Simulated power loss with holes (issue 16.2): a MemoryFs whose files have holes (SEEK_DATA,
 * SEEK_HOLE, PUNCH_HOLE, a punch pending until datasync like a write), so the sync engine's
 * hole paths run under the crash model:
 *
 * - forward: a fresh clone of a source that is mostly holes (the sweep clears its bits with
 *   nothing read or written);
 * - trim: clone k fractured, then the host trims extents of the source (holes there): the
 *   sync punches k where it has data and the source a hole, and those clears must not become
 *   durable before the punches (an unlanded punch leaves k's old data under a clear bit);
 * - protected: the clone has holes, the source is damaged over them and elsewhere; a protected
 *   restore with host reads meanwhile: COD and the background copy make the source read as
 *   zeros over the clone's holes by punching, without reading the clone there.
 *
 * At every crash point INV-1 (and INV-3 for the restore) holds on the durable state; host
 * reads during the restore saw the clone's data (INV-2); recovery ends with the right data.
 */
import assert from 'node:assert/strict'
import {describe, test} from 'node:test'
import {ForwardSync} from '../../src/engine/ForwardSync.js'
import {HostIO} from '../../src/engine/HostIO.js'
import {RestoreSession} from '../../src/engine/Restore.js'
import {CloneGroup} from '../../src/group/CloneGroup.js'
import {addClone} from '../../src/group/GroupAdmin.js'
import {enumerateCrashStates, type MemoryFs} from '../support/MemoryFs.js'
import {mulberry32} from '../../src/io/prng.js'
import {assertDurableInvariants, buildGroup, recoverAsClonectl, clonePath, contextOn, fillPattern, SRC} from '../helpers/memGroup.js'

const X = 4096
const EXTENTS = 24
const SIZE = X * EXTENTS
const TUNING = {chunkBytes: 2 * X, parallel: 2}
const DAMAGE = 0xee

type Kind = 'forward' | 'trim' | 'protected'

class Frozen extends Error {}

async function settle(run: Promise<void>, halted: () => boolean, label: string): Promise<void> {
  try {
    await run
  } catch (error) {
    if (!halted()) throw new Error(`[${label}] failed without a crash: ${(error as Error).message}`, {cause: error})
  }
}

/** Data in extents 0, 3, 4, 9, 15 and 16 only: the rest are holes (runs of 1 to 5 extents). */
const DATA = new Set([0, 3, 4, 9, 15, 16])
const sourceData = fillPattern(EXTENTS, X, (e) => (DATA.has(e) ? 0x40 + e : 0))
/** Extents the host trims in the trim scenario (data on k before). */
const TRIMMED = [3, 4, 15]

interface Run {
  ops: number
  /** Punches issued on the source (restore) or the clone (trim). */
  punches: number
  /** Bytes of the clone's holes that COD zeroed on the source (protected). */
  codZeroed: number
  fs: MemoryFs
  states: Array<{fs: MemoryFs; label: string}>
}

/**
 * Run scenario `kind`; frozen just before fs op `crashAt` when given (that instant's crash
 * states are returned).
 */
async function scenario(kind: Kind, seed: number, crashAt?: number): Promise<Run> {
  const rand = mulberry32(seed)
  const m = await buildGroup({extents: EXTENTS, source: sourceData, clones: kind === 'forward' ? [] : kind === 'trim' ? ['k'] : ['c'], holes: true})
  const fs = m.fs
  if (kind === 'protected' || kind === 'trim') {
    const g0 = await CloneGroup.open(m.ctx, 'g', {writable: true})
    const h0 = new HostIO(g0)
    if (kind === 'protected') {
      // Damage over the clone's holes and its data alike, durably: D[c] marks it.
      for (let e = 0; e < EXTENTS; e++) if (rand() < 0.6) await h0.write(e * X, Buffer.alloc(X, DAMAGE), false)
    } else for (const e of TRIMMED) await h0.trim(e * X, X, false)
    await h0.flush()
    await g0.close()
  }
  const states: Array<{fs: MemoryFs; label: string}> = []
  let halted = false
  let punches = 0
  let codZeroed = 0
  const start = fs.opCount
  const punched = kind === 'protected' ? SRC : clonePath('k')
  fs.onOp = (op) => {
    if (halted) throw new Frozen('power is off')
    if (op.kind === 'punch' && op.path === punched) punches++
    if (crashAt === undefined || fs.opCount - start !== crashAt) return
    for (const s of enumerateCrashStates(fs, {subsets: 4, seed: seed * 7919 + crashAt, torn: true, max: 12})) states.push({fs: fs.crash(s.choice), label: s.label})
    halted = true
    throw new Frozen('power is off')
  }
  const body = async (): Promise<void> => {
    const g = await CloneGroup.open(m.ctx, 'g', {writable: true, readOnlyClones: kind === 'protected' ? ['c'] : []})
    if (kind === 'forward') {
      await addClone(g, {clone: 'n', path: clonePath('n'), create: true})
      const s = await ForwardSync.start(g, {clone: 'n', command: 'crash', tuning: TUNING})
      assert.ok(s instanceof ForwardSync)
      assert.equal((await s.run()).completed, true)
    } else if (kind === 'trim') {
      const s = await ForwardSync.start(g, {clone: 'k', command: 'crash', tuning: TUNING})
      assert.ok(s instanceof ForwardSync)
      assert.equal((await s.run()).completed, true)
    } else {
      await g.beginSession('crash test')
      const host = new HostIO(g)
      const s = await host.gate.exclusive(() => RestoreSession.start(g, {clone: 'c', protected: true, command: 'crash', tuning: TUNING}))
      host.restore = s
      const work = s.run().then(async (done) => {
        if (done) await host.gate.exclusive(() => s.finish())
      })
      work.catch(() => undefined) // awaited below
      // Host reads from the end backwards (the copy goes forwards): COD serves them.
      for (let e = EXTENTS - 1; e >= 0; e -= 2) {
        const got = await host.read(e * X, X)
        assert.ok(got.equals(sourceData.subarray(e * X, (e + 1) * X)), `INV-2: a host read of extent ${e} during the restore did not see the clone's data`)
      }
      await work
      codZeroed = s.cod.zeroedBytes
    }
    await g.close()
  }
  await settle(body(), () => halted, `${kind} seed ${seed} crash at ${crashAt ?? '-'}`)
  fs.onOp = undefined
  return {ops: fs.opCount - start, punches, codZeroed, fs, states}
}

/** INV-1 (and INV-3 for the restore's clone) on the durable state of a crash. */
async function checkDurable(kind: Kind, fs: MemoryFs, label: string): Promise<void> {
  await assertDurableInvariants(fs, {extentSize: X, extents: EXTENTS, label: `${kind} ${label}`, restoredFrom: kind === 'protected' ? {clone: 'c', cloneData: sourceData} : undefined})
}

/** The source as it must end: the restore's clone, or the source with its trims. */
function expected(kind: Kind): Buffer {
  if (kind !== 'trim') return sourceData
  const b = Buffer.from(sourceData)
  for (const e of TRIMMED) b.fill(0, e * X, (e + 1) * X)
  return b
}

/** Recover as clonectl does (resume the restore, or sync again), then the data must be right. */
async function recoverAndCheck(kind: Kind, fs: MemoryFs, label: string): Promise<void> {
  const ctx = contextOn(fs)
  await recoverAsClonectl(fs, {size: SIZE, damage: DAMAGE, tuning: TUNING, restoreClone: kind === 'protected' ? 'c' : undefined, syncClone: kind === 'protected' ? undefined : kind === 'trim' ? 'k' : 'n'})
  const src = fs.contentOf(SRC).subarray(0, SIZE)
  assert.ok(src.equals(expected(kind)), `[${kind} ${label}] the source is not what it must be after recovery`)
  if (kind === 'protected') assert.ok(fs.contentOf(clonePath('c')).subarray(0, SIZE).equals(sourceData), `[${kind} ${label}] the clone changed`)
  for (const c of (await ctx.store.load('g')).clones)
    if (c.name !== 'c') assert.ok(fs.contentOf(clonePath(c.name)).subarray(0, SIZE).equals(src), `[${kind} ${label}] clone ${c.name} differs from the source after recovery`)
}

/** The extents of a file that hold data (SEEK_DATA), in order. */
async function dataExtents(fs: MemoryFs, path: string): Promise<number[]> {
  const f = await fs.open(path)
  try {
    const out: number[] = []
    for (let e = 0; e < EXTENTS; e++) if (f.holes!.seekData(e * X) === e * X) out.push(e)
    return out
  } finally {
    await f.close()
  }
}

const SEEDS = Number(process.env.CLONECTL_CRASH_SEEDS ?? 3)

describe('simulated power loss with holes (sparse sync, trim, restore)', () => {
  for (const kind of ['forward', 'trim', 'protected'] as const) {
    test(`${kind}: every crash state keeps INV-1${kind === 'protected' ? ', INV-2 and INV-3' : ''} and recovers`, async () => {
      let states = 0
      let codZeroed = 0
      for (let seed = 1; seed <= SEEDS; seed++) {
        const {ops, punches, fs, ...run} = await scenario(kind, seed)
        codZeroed += run.codZeroed
        // The premise: the hole paths were taken (a punch where a hole replaces data; the
        // fresh clone written only where the source has data).
        if (kind !== 'forward') assert.ok(punches > 0, `${kind}: holes were punched (${punches})`)
        else assert.deepEqual(await dataExtents(fs, clonePath('n')), [...DATA], 'forward: the fresh clone is allocated only where the source has data')
        for (let k = 1; k <= ops; k++) {
          const {states: at} = await scenario(kind, seed, k)
          for (const s of at) {
            const label = `seed ${seed} op ${k}/${ops} ${s.label}`
            await checkDurable(kind, s.fs, label)
            await recoverAndCheck(kind, s.fs, label)
            states++
          }
        }
      }
      console.log(`${kind} (holes): ${states} crash states checked`)
      if (kind === 'protected') assert.ok(codZeroed > 0, 'COD met holes of the clone (and zeroed them on the source)')
      assert.ok(states >= 200, `only ${states} crash states`)
    })
  }
})
