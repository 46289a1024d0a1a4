/**
 * Simulated power loss on the O_DIRECT path (issue 17.10). The other crash tests use 4 KiB
 * extents and chunks, below the 64 KiB from which FileVolume reads and writes through
 * O_DIRECT, so they never took it. Here extents are 64 KiB: the forward sync of a fresh clone
 * reads the source and writes the clone through MemoryFs's direct handles (which refuse
 * misaligned I/O with EINVAL, as Linux does), and a protected restore reads the clone through
 * one. Each run asserts that the direct path was really taken; at every crash point INV-1
 * (and INV-3 for the restore) holds on the durable state, and recovery ends with the right data.
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

const X = 64 * 1024
const EXTENTS = 8
const SIZE = X * EXTENTS
const TUNING = {chunkBytes: 2 * X, parallel: 2}
const DAMAGE = 0xee

type Kind = 'forward' | 'protected'

class Frozen extends Error {}

async function settle(run: Promise<void>, halted: () => boolean, label: string): Promise<void> {
  try {
    await run
  } catch (error) {
    if (!halted()) throw new Error(`[${label}] failed without a crash: ${(error as Error).message}`, {cause: error})
  }
}

const cloneData = fillPattern(EXTENTS, X, (e) => 0x40 + e)

/**
 * forward: a new clone n (a fresh sparse image) added and fully synced. protected: clone c
 * fractured, the source damaged on random extents, then a protected restore from c.
 * Frozen just before fs op `crashAt` when given: returns that instant's crash states.
 */
async function scenario(kind: Kind, seed: number, crashAt?: number): Promise<{ops: number; direct: {reads: number; writes: number}; states: Array<{fs: MemoryFs; label: string}>}> {
  const rand = mulberry32(seed)
  const m = await buildGroup({extents: EXTENTS, extentSize: X, source: cloneData, clones: kind === 'protected' ? ['c'] : []})
  const fs = m.fs
  if (kind === 'protected') {
    // The source damaged through the host path after the fracture, durably: D[c] marks it.
    const g0 = await CloneGroup.open(m.ctx, 'g', {writable: true})
    const h0 = new HostIO(g0)
    for (let e = 0; e < EXTENTS; e++) if (rand() < 0.6) await h0.write(e * X, Buffer.alloc(X, DAMAGE), false)
    await h0.flush()
    await g0.close()
  }
  const states: Array<{fs: MemoryFs; label: string}> = []
  let halted = false
  const start = fs.opCount
  const direct0 = {reads: fs.directReads, writes: fs.directWrites}
  fs.onOp = () => {
    if (halted) throw new Frozen('power is off')
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
    } else {
      const s = await RestoreSession.start(g, {clone: 'c', protected: true, command: 'crash', tuning: TUNING})
      assert.equal(await s.run(), true)
      await s.finish()
    }
    await g.close()
  }
  await settle(body(), () => halted, `${kind} seed ${seed} crash at ${crashAt ?? '-'}`)
  fs.onOp = undefined
  return {ops: fs.opCount - start, direct: {reads: fs.directReads - direct0.reads, writes: fs.directWrites - direct0.writes}, states}
}

/** INV-1 (and INV-3 for the restore's clone) on the durable state of a crash. */
async function checkDurable(kind: Kind, fs: MemoryFs, label: string): Promise<void> {
  await assertDurableInvariants(fs, {extentSize: X, extents: EXTENTS, label: `${kind} ${label}`, restoredFrom: kind === 'protected' ? {clone: 'c', cloneData: cloneData} : undefined})
}

/** Recover as clonectl does (resume the restore, or sync again), then the data must be right. */
async function recoverAndCheck(kind: Kind, fs: MemoryFs, label: string): Promise<void> {
  const ctx = contextOn(fs)
  await recoverAsClonectl(fs, {size: SIZE, damage: DAMAGE, tuning: TUNING, restoreClone: kind === 'protected' ? 'c' : undefined, syncClone: kind === 'forward' ? 'n' : undefined})
  const src = fs.contentOf(SRC).subarray(0, SIZE)
  if (kind === 'protected') {
    assert.ok(src.equals(cloneData), `[${kind} ${label}] the source is not the clone's data after recovery`)
    assert.ok(fs.contentOf(clonePath('c')).subarray(0, SIZE).equals(cloneData), `[${kind} ${label}] the clone changed`)
  } else if ((await ctx.store.load('g')).clones.some((c) => c.name === 'n')) {
    assert.ok(fs.contentOf(clonePath('n')).subarray(0, SIZE).equals(src), `[${kind} ${label}] the clone differs from the source after recovery`)
  }
}

const SEEDS = Number(process.env.CLONECTL_CRASH_SEEDS ?? 3)

describe('simulated power loss on the O_DIRECT path (64 KiB extents)', () => {
  for (const kind of ['forward', 'protected'] as const) {
    test(`${kind}: the copy goes through O_DIRECT, and every crash state keeps INV-1${kind === 'protected' ? ' and INV-3' : ''} and recovers`, async () => {
      let states = 0
      for (let seed = 1; seed <= SEEDS; seed++) {
        const {ops, direct} = await scenario(kind, seed)
        // The premise of this file: without it, it would test the buffered path again.
        assert.ok(direct.reads > 0, `${kind}: bulk reads went through O_DIRECT (${direct.reads})`)
        if (kind === 'forward') assert.ok(direct.writes > 0, `${kind}: writes into the fresh clone went through O_DIRECT (${direct.writes})`)
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
      console.log(`${kind} (O_DIRECT): ${states} crash states checked`)
      assert.ok(states >= 200, `only ${states} crash states`)
    })
  }
})
