/**
 * What serve's block status says (src/group/exportStatus.ts), on a stand-in for the host I/O
 * path: the source's extents, the clones' delta maps D, a protected restore's P and the
 * scoreboard S. The rule under test: never report a hole that a read would not return as
 * zeros — during a restore, an extent still to be copied from the clone (D[c] ∧ ¬P) or being
 * copied (S) is data whatever the source's holes say; the restore clone's delta is D[c] | P.
 */
import assert from 'node:assert/strict'
import {describe, test} from 'node:test'
import type {HostIO} from '../../src/engine/HostIO.js'
import {Scoreboard} from '../../src/engine/Scoreboard.js'
import {ExportStatus} from '../../src/group/exportStatus.js'
import {ExtentBitmap} from '../../src/map/ExtentBitmap.js'
import type {VolumeExtent} from '../../src/volume/Volume.js'

const X = 64 * 1024
const N = 16
const SIZE = N * X

function bits(set: number[]): ExtentBitmap {
  const b = new ExtentBitmap(N)
  for (const e of set) b.set(e)
  return b
}

/** A host path whose source is one big hole, with clones c1 (D: 3) and c2 (D: 5, 6). */
function hostWith(opts: {restoreFrom?: string; P?: number[]; copying?: number[]; sourceExtents?: (o: number, l: number) => VolumeExtent[]} = {}) {
  const members = new Map([
    ['c1', {name: 'c1', map: {bits: bits([3])}}],
    ['c2', {name: 'c2', map: {bits: bits([5, 6])}}],
  ])
  const scoreboard = new Scoreboard()
  for (const e of opts.copying ?? []) scoreboard.tryClaim(e)
  const src = {extents: async (o: number, l: number): Promise<VolumeExtent[]> => opts.sourceExtents?.(o, l) ?? [{offset: o, length: l, kind: 'hole'}]}
  const host = {
    g: {extentSize: X, volumeSize: SIZE, members, scoreboard, src},
    restore: opts.restoreFrom ? {member: members.get(opts.restoreFrom), P: opts.P ? {bits: bits(opts.P)} : undefined} : undefined,
  }
  return new ExportStatus(host as unknown as HostIO)
}

describe('block status of a served group', () => {
  test('given no restore, base:allocation is the source extents and each delta context is its D', async () => {
    const s = hostWith({sourceExtents: (o, l) => [{offset: o, length: X, kind: 'data'}, {offset: o + X, length: l - X, kind: 'hole'}]})
    assert.deepEqual(s.contexts(), ['base:allocation', 'clonectl:delta:c1', 'clonectl:delta:c2'])
    assert.deepEqual(await s.status('base:allocation', 0, SIZE), [
      {length: X, flags: 0},
      {length: SIZE - X, flags: 3},
    ])
    assert.deepEqual(await s.status('clonectl:delta:c2', 4 * X + 100, 4 * X), [
      {length: X - 100, flags: 0},
      {length: 2 * X, flags: 1},
      {length: X + 100, flags: 0},
    ])
    assert.deepEqual(await s.status('clonectl:delta:gone', 0, X), [{length: X, flags: 1}], 'a clone removed since SET: all dirty')
  })

  test('given a protected restore from c2 with P on 6 and extent 9 being copied, the holes of extents 5 and 9 are reported as data, 6 stays a hole', async () => {
    const s = hostWith({restoreFrom: 'c2', P: [6, 10], copying: [9]})
    assert.deepEqual(await s.status('base:allocation', 0, SIZE), [
      {length: 5 * X, flags: 3},
      {length: X, flags: 0}, // 5: D[c] ∧ ¬P — a read copies the clone's data first
      {length: 3 * X, flags: 3}, // 6 (P: host data, final), 7, 8
      {length: X, flags: 0}, // 9: in S, being copied
      {length: 6 * X, flags: 3},
    ])
    // The restore clone's delta is D[c] | P; another clone's is its own D.
    assert.deepEqual(await s.status('clonectl:delta:c2', 0, SIZE), [
      {length: 5 * X, flags: 0},
      {length: 2 * X, flags: 1},
      {length: 3 * X, flags: 0},
      {length: X, flags: 1},
      {length: 5 * X, flags: 0},
    ])
    assert.deepEqual(await s.status('clonectl:delta:c1', 0, 5 * X), [
      {length: 3 * X, flags: 0},
      {length: X, flags: 1},
      {length: X, flags: 0},
    ])
  })

  test('a pending extent is data only for the bytes asked: a request inside it is one data run', async () => {
    const s = hostWith({restoreFrom: 'c2'})
    assert.deepEqual(await s.status('base:allocation', 5 * X + 512, 1024), [{length: 1024, flags: 0}])
    assert.deepEqual(await s.status('base:allocation', 4 * X, 2 * X), [
      {length: X, flags: 3},
      {length: X, flags: 0},
    ])
  })
})
