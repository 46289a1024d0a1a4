/**
 * The torn-write states of the version-2 map page format (DESIGN §3, §7): a commit whose
 * datasync never returned, cut at every 512-byte sector of every slot write, alone or with
 * every other write landed, plus random subsets. After each crash the reopened map must show
 * each page as its image before or after the commit, never a mix, and never "damaged" (a torn
 * write is not damage). Then a second commit on the recovered map, torn the same ways: the
 * slot chosen and the seq written after a fallback keep the same guarantee. D and P alike.
 */
import assert from 'node:assert/strict'
import {describe, test} from 'node:test'
import {enumerateCrashStates, MemoryFs, type CrashChoice} from '../support/MemoryFs.js'
import {ExtentBitmap} from '../../src/map/ExtentBitmap.js'
import {EXTENTS_PER_PAGE, PersistentMap, type MapKind} from '../../src/map/PersistentMap.js'

const X = 4096
// Three pages, the last one partial.
const COUNT = 2 * EXTENTS_PER_PAGE + 3000
const SIZE = COUNT * X
const PATH = '/state/m.map'
const PAGES = 3

function expectOf(kind: MapKind): {kind: MapKind; extentSize: number; volumeSize: number; operationId: string} {
  return {kind, extentSize: X, volumeSize: SIZE, operationId: 'op-torn'}
}

/** A change that one checkpoint commits, touching every page: sets, and (for D) clears. */
type Change = {sets: Array<[number, number]>; clears: Array<[number, number]>}

function applied(before: ExtentBitmap, c: Change): ExtentBitmap {
  const b = before.clone()
  for (const [s, e] of c.sets) b.setRange(s, e)
  for (const [s, e] of c.clears) b.clearRange(s, e)
  return b
}

/** Page p of a equals page p of b. */
function samePage(a: ExtentBitmap, b: ExtentBitmap, p: number): boolean {
  const end = Math.min(COUNT, (p + 1) * EXTENTS_PER_PAGE)
  for (let e = p * EXTENTS_PER_PAGE; e < end; e++) if (a.get(e) !== b.get(e)) return false
  return true
}

/**
 * Commit `c` on the open map `m` of `fs` with the map's datasync failing (the power is cut
 * before it returns): the page writes stay pending in fs.
 */
async function commitCut(fs: MemoryFs, m: PersistentMap, c: Change): Promise<void> {
  for (const [s, e] of c.sets) {
    m.setVolatile(s, e)
    m.stage(s, e)
  }
  for (const [s, e] of c.clears) m.clear(s, e)
  const t = m.beginCheckpoint()
  fs.onOp = (op) => {
    if (op.kind === 'datasync' && op.path === PATH) throw Object.assign(new Error('power cut'), {code: 'EIO'})
  }
  await assert.rejects(m.commitCheckpoint(t), /power cut/)
  fs.onOp = undefined
}

/** Every sector cut of every pending write (before the writes after it, or with all of them), and random subsets. */
function crashChoices(fs: MemoryFs, seed: number, minWrites = PAGES): Array<{choice: CrashChoice; label: string}> {
  const out: Array<{choice: CrashChoice; label: string}> = []
  const ops = fs.pendingOps()
  assert.ok(ops.length >= minWrites, `the cut commit leaves its ${minWrites} writes pending (${ops.length})`)
  for (const op of ops) {
    if (op.kind !== 'write') continue
    const sectors = Math.ceil((op.length ?? 0) / 512)
    for (let units = 1; units < sectors; units++) {
      out.push({choice: {kind: 'prefix', count: op.index, torn: {index: op.index, at: 512, units}}, label: `write #${op.index} @${op.offset} cut after ${units} sectors`})
      out.push({choice: {kind: 'all', torn: {index: op.index, at: 512, units}}, label: `write #${op.index} @${op.offset} cut after ${units} sectors, the others landed`})
    }
  }
  for (const s of enumerateCrashStates(fs, {subsets: 8, seed, torn: true, max: 40})) out.push(s)
  return out
}

/** Open the map on a crash state and check each page is `before` or `after`, with no damage. */
async function checkState(c: MemoryFs, kind: MapKind, before: ExtentBitmap, after: ExtentBitmap, label: string): Promise<PersistentMap> {
  const r = await PersistentMap.open(c, PATH, expectOf(kind))
  assert.deepEqual(r.damagedPages, [], `[${label}] a torn write is not damage`)
  for (let p = 0; p < PAGES; p++) assert.ok(samePage(r.bits, before, p) || samePage(r.bits, after, p), `[${label}] page ${p} is the image before or after the commit`)
  return r
}

for (const kind of ['delta', 'protected'] as MapKind[]) {
  describe(`torn map page writes (${kind})`, () => {
    test('given a commit over every page cut before its datasync, when the map is reopened from any crash state, then each page is its before or after image and nothing reads as damaged; the same after a second commit on the recovered map', async () => {
      const fs = new MemoryFs()
      fs.seedDir('/state') // a state directory made durably before: the map file is the point here
      const init = new ExtentBitmap(COUNT)
      for (let p = 0; p < PAGES; p++) init.setRange(p * EXTENTS_PER_PAGE + 10, p * EXTENTS_PER_PAGE + 400)
      const m = await PersistentMap.create(fs, PATH, {...expectOf(kind), extentCount: COUNT}, init)
      // One ordinary commit first, so the slots hold different seqs (2 in slot 1, 1 in slot 0).
      m.setVolatile(5, 6)
      m.stage(5, 6)
      await m.commitCheckpoint(m.beginCheckpoint())
      const before = m.bits.clone()
      // Bits in the first and the last sector of each page's payload, and (D) clears.
      const first: Change = {sets: [], clears: []}
      for (let p = 0; p < PAGES; p++) {
        const base = p * EXTENTS_PER_PAGE
        first.sets.push([base + 1000, base + 1010])
        if (p < PAGES - 1) first.sets.push([base + 31_990, base + 32_000])
        if (kind === 'delta') first.clears.push([base + 10, base + 20])
      }
      const after = applied(before, first)
      await commitCut(fs, m, first)
      let states = 0
      let second = 0
      for (const {choice, label} of crashChoices(fs, 11)) {
        const c = fs.crash(choice)
        const r = await checkState(c, kind, before, after, label)
        states++
        // Every sixth state: recover, commit something else, cut it too, and check again.
        if (states % 6 === 0) {
          const before2 = r.bits.clone()
          const next: Change = {sets: [], clears: []}
          for (let p = 0; p < PAGES; p++) {
            const base = p * EXTENTS_PER_PAGE
            next.sets.push([base + 2000, base + 2001])
            next.sets.push([base + 450, base + 460])
            if (kind === 'delta') next.clears.push([base + 1000, base + 1005])
          }
          const after2 = applied(before2, next)
          await commitCut(c, r, next)
          for (const s2 of crashChoices(c, states)) {
            const r2 = await checkState(c.crash(s2.choice), kind, before2, after2, `${label}; then ${s2.label}`)
            await r2.close()
            second++
          }
        }
        await r.close()
      }
      assert.ok(states > 50 && second > 200, `${states} crash states, ${second} after a second commit`)
    })
  })
}

describe('a crash while open repairs a damaged D page', () => {
  test('given a D page whose current slot is damaged, when power fails during the repair at open (any cut of either slot write), then the reopened page is all dirty again and the other pages are unchanged', async () => {
    const fs = new MemoryFs()
    fs.seedDir('/state') // a state directory made durably before: the map file is the point here
    const init = new ExtentBitmap(COUNT)
    init.setRange(100, 110)
    init.setRange(EXTENTS_PER_PAGE + 7, EXTENTS_PER_PAGE + 9)
    const m = await PersistentMap.create(fs, PATH, {...expectOf('delta'), extentCount: COUNT}, init)
    await m.setDurable(200, 201) // page 0 now current in slot 1
    await m.close()
    // Rot in page 0's current slot (slot 1 at offset 4096 + 4096), made durable.
    const f = await fs.open(PATH, {write: true})
    const b = Buffer.alloc(1)
    await f.read(b, 2 * X + 700)
    b[0] ^= 0x40
    await f.write(b, 2 * X + 700)
    await f.datasync()
    await f.close()
    const want = init.clone()
    want.setRange(200, 201)
    want.setRange(0, EXTENTS_PER_PAGE)
    fs.onOp = (op) => {
      if (op.kind === 'datasync' && op.path === PATH) throw Object.assign(new Error('power cut'), {code: 'EIO'})
    }
    await assert.rejects(PersistentMap.open(fs, PATH, expectOf('delta')), /power cut/)
    fs.onOp = undefined
    let states = 0
    for (const {choice, label} of crashChoices(fs, 3, 2)) {
      const r = await PersistentMap.open(fs.crash(choice), PATH, expectOf('delta'))
      assert.ok(r.bits.equals(want), `[${label}] page 0 all dirty, the rest as it was`)
      await r.close()
      states++
    }
    assert.ok(states > 10, `${states} crash states`)
  })
})
