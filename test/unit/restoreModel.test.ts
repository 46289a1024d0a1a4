/**
 * Model-based: random host reads, writes of random sizes and alignments, and flushes,
 * interleaved at random points with the sync engine and COD (every fs operation may be
 * delayed a random number of macrotasks, chosen by fast-check). Checked against a plain
 * model: every read returns the latest acknowledged write or the clone's data; at the end the
 * source equals the model; a protected restore never changes the clone.
 */
import assert from 'node:assert/strict'
import {createHash} from 'node:crypto'
import {test} from 'node:test'
import fc from 'fast-check'
import {HostIO} from '../../src/engine/HostIO.js'
import {RestoreSession} from '../../src/engine/Restore.js'
import {mulberry32} from '../../src/io/MemoryFs.js'
import {buildGroup, clonePath, fillPattern, openGroup} from '../helpers/memGroup.js'

const X = 4096
const EXTENTS = 16
const SIZE = X * EXTENTS

type Op = {kind: 'read'; off: number; len: number} | {kind: 'write'; off: number; len: number; fua: boolean; value: number} | {kind: 'flush'}

const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({kind: fc.constant('read' as const), off: fc.integer({min: 0, max: SIZE - 1}), len: fc.integer({min: 1, max: 3 * X})}),
  fc.record({kind: fc.constant('write' as const), off: fc.integer({min: 0, max: SIZE - 1}), len: fc.integer({min: 1, max: 3 * X}), fua: fc.boolean(), value: fc.integer({min: 1, max: 250})}),
  fc.constant({kind: 'flush' as const}),
)

async function scenario(isProtected: boolean, damage: number[], ops: Op[], delaySeed: number): Promise<void> {
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
  for (const op of ops) {
    if (op.kind === 'flush') {
      await host.flush()
      continue
    }
    const len = Math.min(op.len, SIZE - op.off)
    if (op.kind === 'read') {
      const got = await host.read(op.off, len)
      assert.ok(got.equals(model.subarray(op.off, op.off + len)), `read ${op.off}+${len} returned neither the latest write nor the clone's data`)
    } else {
      const data = Buffer.alloc(len, op.value)
      await host.write(op.off, data, op.fua)
      data.copy(model, op.off)
    }
  }
  assert.equal(await run, true)
  await host.gate.exclusive(() => s.finish())
  m.fs.onOp = undefined
  const final = await g.src.read(0, SIZE)
  assert.ok(final.equals(model), 'the source equals the model at the end')
  const clone = await g.member('c').vol.read(0, SIZE)
  if (isProtected) {
    assert.equal(createHash('sha256').update(m.fs.contentOf(clonePath('c'))).digest('hex'), cloneHash, 'the clone never changed')
    for (let e = 0; e < EXTENTS; e++) {
      const differs = final.compare(clone, e * X, (e + 1) * X, e * X, (e + 1) * X) !== 0
      if (differs) assert.ok(g.member('c').map.bits.get(e), `extent ${e} differs from the clone but D[c] does not say so`)
    }
  } else {
    assert.ok(clone.equals(model), 'unprotected: host writes were mirrored to the clone')
  }
  await g.close()
}

const damageArb = fc.array(fc.integer({min: 0, max: EXTENTS - 1}), {minLength: 1, maxLength: EXTENTS})

test('protected restore under random host I/O matches the model (300 runs)', async () => {
  await fc.assert(
    fc.asyncProperty(damageArb, fc.array(opArb, {maxLength: 40}), fc.integer(), async (damage, ops, seed) => scenario(true, damage, ops, seed)),
    {numRuns: 300},
  )
})

test('unprotected reverse sync under random host I/O matches the model (200 runs)', async () => {
  await fc.assert(
    fc.asyncProperty(damageArb, fc.array(opArb, {maxLength: 40}), fc.integer(), async (damage, ops, seed) => scenario(false, damage, ops, seed)),
    {numRuns: 200},
  )
})
