/**
 * Model-based: random host reads, writes of random sizes and alignments, and flushes,
 * interleaved at random points with the sync engine and COD (every fs operation may be
 * delayed a random number of macrotasks, chosen by fast-check). Checked against a plain
 * model: every read returns the latest acknowledged write or the clone's data; at the end the
 * source equals the model; a protected restore never changes the clone; D[c] after the end
 * equals P's extents. Host requests come in batches of 1–3 in flight at once (byte-disjoint
 * writes): a read overlapping a write of its own batch may see that write or what was there.
 */
import assert from 'node:assert/strict'
import {createHash} from 'node:crypto'
import {test} from 'node:test'
import fc from 'fast-check'
import {HostIO} from '../../src/engine/HostIO.js'
import {RestoreSession} from '../../src/engine/Restore.js'
import {mulberry32} from '../../src/io/prng.js'
import {buildGroup, clonePath, fillPattern, openGroup} from '../helpers/memGroup.js'

const X = 4096
const EXTENTS = 16
const SIZE = X * EXTENTS

type Op = {kind: 'read'; off: number; len: number} | {kind: 'write'; off: number; len: number; fua: boolean; value: number} | {kind: 'flush'}

const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({kind: fc.constant('read' as const), off: fc.integer({min: 0, max: SIZE - 1}), len: fc.integer({min: 1, max: 3 * X})}),
  // Sizes and alignments of every kind: sub-sector, sector-aligned, whole extents, multi-extent.
  fc.record({
    kind: fc.constant('write' as const),
    off: fc.oneof(fc.integer({min: 0, max: SIZE - 1}), fc.integer({min: 0, max: EXTENTS - 1}).map((e) => e * X), fc.integer({min: 0, max: SIZE / 512 - 1}).map((x) => x * 512)),
    len: fc.oneof(fc.integer({min: 1, max: 3 * X}), fc.integer({min: 1, max: 3}).map((n) => n * X), fc.integer({min: 1, max: 8}).map((n) => n * 512)),
    fua: fc.boolean(),
    value: fc.integer({min: 1, max: 250}),
  }),
  fc.constant({kind: 'flush' as const}),
)

/** Host requests issued together (1–3 in flight). */
const batchArb: fc.Arbitrary<Op[]> = fc.array(opArb, {minLength: 1, maxLength: 3})

async function scenario(isProtected: boolean, damage: number[], batches: Op[][], delaySeed: number): Promise<void> {
  const cloneData = fillPattern(EXTENTS, X, (e) => 0x40 + e)
  const m = await buildGroup({extents: EXTENTS, source: cloneData, clones: ['c']})
  // Damage through the host path so D[c] marks it.
  {
    const g = await openGroup(m)
    const host = new HostIO(g)
    for (const e of new Set(damage)) await host.write(e * X, Buffer.alloc(X, 0xee), false)
    await host.flush()
    await g.close()
  }
  const cloneHash = createHash('sha256').update(m.fs.contentOf(clonePath('c'))).digest('hex')
  const rand = mulberry32(delaySeed)
  m.fs.onOp = async () => {
    const n = Math.floor(rand() * 3)
    for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r))
  }
  const g = await openGroup(m, isProtected ? ['c'] : [])
  const host = new HostIO(g)
  const s = await host.gate.exclusive(() => RestoreSession.start(g, {clone: 'c', protected: isProtected, command: 'model', tuning: {chunkBytes: X, parallel: 2}}))
  host.restore = s
  const model = Buffer.from(cloneData)
  const run = s.run()
  for (const batch of batches) {
    const before = Buffer.from(model)
    const writes: Array<{off: number; data: Buffer; fua: boolean}> = []
    const reads: Array<{off: number; len: number}> = []
    let flush = false
    for (const op of batch) {
      if (op.kind === 'flush') flush = true
      else if (op.kind === 'read') reads.push({off: op.off, len: Math.min(op.len, SIZE - op.off)})
      else {
        const len = Math.min(op.len, SIZE - op.off)
        if (writes.some((w) => op.off < w.off + w.data.length && w.off < op.off + len)) continue // keep the model exact
        writes.push({off: op.off, data: Buffer.alloc(len, op.value), fua: op.fua})
      }
    }
    const inBatch = (i: number, v: number): boolean => writes.some((w) => i >= w.off && i < w.off + w.data.length && w.data[0] === v)
    await Promise.all([
      ...writes.map(async (w) => {
        await host.write(w.off, w.data, w.fua)
        w.data.copy(model, w.off)
      }),
      ...reads.map(async (r) => {
        const got = await host.read(r.off, r.len)
        for (let i = 0; i < r.len; i++) {
          const at = r.off + i
          if (got[i] !== before[at] && !inBatch(at, got[i]))
            assert.fail(`read ${r.off}+${r.len}: byte ${at} (extent ${Math.floor(at / X)}) is ${got[i]}, neither the latest acknowledged write / clone data (${before[at]}) nor a write in flight`)
        }
      }),
      ...(flush ? [host.flush()] : []),
    ])
  }
  assert.equal(await run, true)
  const P = isProtected ? g.protectedMap!.bits.clone() : undefined
  await host.gate.exclusive(() => s.finish())
  m.fs.onOp = undefined
  const final = await g.src.read(0, SIZE)
  assert.ok(final.equals(model), 'the source equals the model at the end')
  const clone = await g.member('c').vol.read(0, SIZE)
  if (isProtected) {
    assert.equal(createHash('sha256').update(m.fs.contentOf(clonePath('c'))).digest('hex'), cloneHash, 'the clone never changed')
    for (let e = 0; e < EXTENTS; e++) {
      assert.equal(g.member('c').map.bits.get(e), P!.get(e), `D[c][${e}] after the end differs from P[${e}]`)
      const differs = final.compare(clone, e * X, (e + 1) * X, e * X, (e + 1) * X) !== 0
      if (differs) assert.ok(g.member('c').map.bits.get(e), `extent ${e} differs from the clone but D[c] does not say so`)
    }
  } else {
    assert.ok(clone.equals(model), 'unprotected: host writes were mirrored to the clone')
  }
  await g.close()
}

const damageArb = fc.array(fc.integer({min: 0, max: EXTENTS - 1}), {minLength: 1, maxLength: EXTENTS})

test('protected restore under random host I/O matches the model (350 runs)', async () => {
  await fc.assert(
    fc.asyncProperty(damageArb, fc.array(batchArb, {maxLength: 25}), fc.integer(), async (damage, batches, seed) => scenario(true, damage, batches, seed)),
    {numRuns: 350},
  )
})

test('unprotected reverse sync under random host I/O matches the model (200 runs)', async () => {
  await fc.assert(
    fc.asyncProperty(damageArb, fc.array(batchArb, {maxLength: 25}), fc.integer(), async (damage, batches, seed) => scenario(false, damage, batches, seed)),
    {numRuns: 200},
  )
})
