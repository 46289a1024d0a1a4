/**
 * The seeds' worked examples, state by state (004: Figs. 6–9; 003: Figs. 10–11), run on the
 * real engine over an in-memory file system.
 */
import assert from 'node:assert/strict'
import {describe, test} from 'node:test'
import {HostIO} from '../../src/engine/HostIO.js'
import {RestoreSession} from '../../src/engine/Restore.js'
import {buildGroup, clonePath, contextOn, fillPattern, gate, openGroup, setBits, SRC} from '../helpers/memGroup.js'

const X = 4096
const cloneByte = (e: number): number => 0x40 + e

/** Source = clone, then the given extents damaged through the host path (so D marks them). */
async function damaged(extents: number, damage: number[], clones = ['c']): Promise<Awaited<ReturnType<typeof buildGroup>>> {
  const m = await buildGroup({extents, source: fillPattern(extents, X, cloneByte), clones})
  const g = await openGroup(m)
  const host = new HostIO(g)
  for (const e of damage) await host.write(e * X, Buffer.alloc(X, 0xee), false)
  await host.flush()
  await g.close()
  return m
}

describe('Fig. 6: host writes during a protected restore', () => {
  test('given D[c] = {4, 7}; when writes hit extents 0, 4 and 7 partly, then 0 needs no COD, 4 and 7 do, and P = {0, 4, 7}', async () => {
    const m = await damaged(8, [4, 7])
    const g = await openGroup(m, ['c'])
    const host = new HostIO(g)
    const s = await host.gate.exclusive(() => RestoreSession.start(g, {clone: 'c', protected: true, command: 'test'}))
    host.restore = s
    assert.deepEqual(setBits(g.member('c').map.bits), [4, 7], 'given: the clone delta map has bits 4 and 7')

    // Write 1: extent 0 is not in D[c] — no COD.
    await host.write(0 * X + 100, Buffer.alloc(200, 1), false)
    assert.equal(s.cod.copies, 0)
    // Writes 2 and 3 cover extents 4 and 7 in part — each waits for a COD of its extent.
    await Promise.all([host.write(4 * X + 10, Buffer.alloc(100, 2), false), host.write(7 * X + 4000, Buffer.alloc(96, 3), false)])
    assert.equal(s.cod.copies, 2, 'extents 4 and 7 were copied on demand')
    assert.deepEqual(setBits(g.protectedMap!.bits), [0, 4, 7], 'then: P has bits 0, 4 and 7')
    // The seeds clear D[c] 4 and 7 after their COD. Here the host write sets D[c] again (every
    // host write sets D[c] and P, so D[c] := P at the end is exact); what the seeds' clear
    // means — nothing left to restore at 4 and 7 — is D[c] ∧ ¬P empty there.
    for (const e of [4, 7]) assert.ok(!(g.member('c').map.bits.get(e) && !g.protectedMap!.bits.get(e)), `D[c] ∧ ¬P is clear at ${e}`)
    assert.equal(s.remaining(), 0, 'the sync engine has nothing left to copy: 4 and 7 were restored by COD')

    const src = await g.src.read(0, 8 * X)
    const ext4 = src.subarray(4 * X, 5 * X)
    assert.ok(ext4.subarray(0, 10).every((b) => b === cloneByte(4)), 'the rest of extent 4 is the clone data the COD brought')
    assert.ok(ext4.subarray(10, 110).every((b) => b === 2), 'write 2 landed after the COD')
    assert.ok(ext4.subarray(110).every((b) => b === cloneByte(4)))

    // Improvement on the seeds: a write covering an extent whole needs no COD.
    await host.write(5 * X, Buffer.alloc(X, 5), false) // extent 5 not in D: trivially none
    const before = s.cod.copies
    await host.gate.exclusive(async () => undefined)
    assert.equal(s.cod.copies, before)

    assert.equal(await s.run(), true)
    await host.gate.exclusive(() => s.finish())
    assert.deepEqual(setBits(g.member('c').map.bits), [0, 4, 5, 7], 'at the end D[c] := P (what the host changed since)')
    assert.ok((await g.member('c').vol.read(0, 8 * X)).equals(fillPattern(8, X, cloneByte)), 'the clone was never written')
    await g.close()
  })

  test('given D[c] = {3}; when a write covers extent 3 whole, then it needs no COD (an improvement on the seeds)', async () => {
    const m = await damaged(8, [3])
    const g = await openGroup(m, ['c'])
    const host = new HostIO(g)
    const s = await host.gate.exclusive(() => RestoreSession.start(g, {clone: 'c', protected: true, command: 'test'}))
    host.restore = s
    await host.write(3 * X, Buffer.alloc(X, 9), false)
    assert.equal(s.cod.copies, 0)
    assert.ok((await host.read(3 * X, X)).every((b) => b === 9))
    assert.equal(await s.run(), true)
    assert.ok((await g.src.read(3 * X, X)).every((b) => b === 9), 'the sync engine did not copy over the host write')
    await g.close()
  })
})

describe('Figs. 7–9: two clones, a host write over extents 6 and 7, a crash, recovery', () => {
  test('given D[c] = {7} and clone k2 fractured; when a write spans 6–7, then only 7 is copied on demand, P and D[k2] get 6 and 7; after a crash the resumed restore never overwrites the write', async () => {
    const m = await damaged(10, [7], ['c', 'k2'])
    const g = await openGroup(m, ['c'])
    const host = new HostIO(g)
    const s = await host.gate.exclusive(() => RestoreSession.start(g, {clone: 'c', protected: true, command: 'test'}))
    host.restore = s
    const write1 = Buffer.alloc(X, 0x77)
    await host.write(6 * X + X / 2, write1, false) // second half of 6, first half of 7
    assert.equal(s.cod.copies, 1, 'bit 6 is not in D[c]: no COD; bit 7 is: COD')
    assert.deepEqual(setBits(g.protectedMap!.bits), [6, 7])
    assert.ok(g.member('k2').map.bits.get(6) && g.member('k2').map.bits.get(7), "Fig. 8: clone k2's delta map tracks the write")
    await host.flush() // the write is acknowledged as durable
    // Power fails here, before the sync engine ran.
    const crashed = m.fs.crash({kind: 'durable'})
    await g.close({save: false})

    const m2 = {...m, fs: crashed, ctx: contextOn(crashed)}
    const g2 = await openGroup(m2, ['c'])
    assert.equal(g2.record.operation?.kind, 'restore', 'the restore is recorded as interrupted')
    const host2 = new HostIO(g2)
    const r = await host2.gate.exclusive(() => RestoreSession.resume(g2, {}))
    host2.restore = r
    assert.ok(g2.member('c').map.bits.get(6) || g2.member('c').map.bits.get(7), 'Fig. 9: bits for 6/7 are set in D[c] after recovery')
    assert.deepEqual(setBits(g2.protectedMap!.bits), [6, 7], 'the flush made P 6 and 7 durable: recovery knows the host wrote them')
    // Host write 2 after the resume: P protects 6 and 7, so no COD although D[c] has them.
    await host2.write(6 * X + 100, Buffer.alloc(50, 0x78), false)
    assert.equal(r.cod.copies, 0)
    assert.equal(await r.run(), true)
    await host2.gate.exclusive(() => r.finish())
    const src = await g2.src.read(6 * X, 2 * X)
    assert.ok(src.subarray(X / 2, X + X / 2).every((b) => b === 0x77 || b === 0x78), 'write 1 was never overwritten by the clone')
    assert.ok((await g2.member('c').vol.read(0, 10 * X)).equals(fillPattern(10, X, cloneByte)), 'clone c untouched')
    await g2.close()
  })
})

describe('Figs. 10–11: a collision during an unprotected reverse sync', () => {
  test('given the sync engine is copying extent 3; when a host write hits extent 3, then the collision makes the engine copy it again', async () => {
    const m = await damaged(8, [3])
    const g = await openGroup(m)
    const host = new HostIO(g)
    const s = await host.gate.exclusive(() => RestoreSession.start(g, {clone: 'c', protected: false, command: 'test'}))
    host.restore = s
    // Hold the sync engine's write of its chunk to the source, after it read the clone.
    const hold = gate()
    let held = false
    m.fs.onOp = async (op) => {
      if (!held && op.kind === 'write' && op.path === SRC && op.offset === 3 * X && op.length === X) {
        held = true
        await hold.promise
      }
    }
    const run = s.run()
    for (let i = 0; !held && i < 1000; i++) await new Promise((r) => setImmediate(r))
    assert.ok(held, 'the sync engine reached its write of extent 3')
    // Fig. 10: the host writes extent 3 (mirrored to source and clone) while it is being copied.
    await host.write(3 * X + 8, Buffer.alloc(16, 0xab), false)
    hold.release()
    assert.equal(await run, true)
    m.fs.onOp = undefined
    assert.ok(g.collisions.collisions >= 1, 'Fig. 11: the collision was detected')
    await host.gate.exclusive(() => s.finish())
    const src = await g.src.read(0, 8 * X)
    assert.ok(src.equals(m.fs.contentOf(clonePath('c')).subarray(0, 8 * X)), 'source equals the clone')
    assert.ok(src.subarray(3 * X + 8, 3 * X + 24).every((b) => b === 0xab), "and holds the host's write")
    assert.equal(g.member('c').state, 'synchronized')
    await g.close()
  })
})
