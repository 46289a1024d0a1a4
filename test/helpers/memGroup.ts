/**
 * A clone group on a MemoryFs, built through the real engine (createGroup, addClone,
 * ForwardSync, fractureClones): small volumes of a few 4 KiB extents, for named scenarios,
 * model tests and simulated power loss. No lock: GroupLock uses the real file system.
 */
import assert from 'node:assert/strict'
import {ForwardSync} from '../../src/engine/ForwardSync.js'
import {CloneGroup, type GroupContext, mapFileName} from '../../src/group/CloneGroup.js'
import {addClone, createGroup, fractureClones, recoverStale} from '../../src/group/GroupAdmin.js'
import {RestoreSession} from '../../src/engine/Restore.js'
import {MemoryFs} from '../support/MemoryFs.js'
import {GroupStore} from '../../src/store/GroupStore.js'
import {PersistentMap} from '../../src/map/PersistentMap.js'

export const SRC = '/vol/src.img'
export const clonePath = (name: string): string => `/vol/${name}.img`

export interface MemGroup {
  fs: MemoryFs
  ctx: GroupContext
  extentSize: number
  extents: number
  size: number
}

export function contextOn(fs: MemoryFs): GroupContext {
  // The creation lock is a real file (GroupLock); a MemoryFs group runs in one process.
  return {fs, store: new GroupStore(fs, '/state', {creationLock: false})}
}

/** Fill: byte value of extent e (a recognizable pattern per extent). */
export function fillPattern(extents: number, extentSize: number, value: (e: number) => number): Buffer {
  const b = Buffer.alloc(extents * extentSize)
  for (let e = 0; e < extents; e++) b.fill(value(e), e * extentSize, (e + 1) * extentSize)
  return b
}

/**
 * A group "g" whose source holds `source`, with clones synced and then fractured (all of
 * them, unless `mirrored` names some to leave synchronized). Everything is durable on return.
 * With `holes`, the MemoryFs has holes: the source's zero 4 KiB blocks are holes, and so are
 * the clones' extents the sync did not write.
 */
export async function buildGroup(o: {extents: number; extentSize?: number; source: Buffer; clones: string[]; mirrored?: string[]; holes?: boolean}): Promise<MemGroup> {
  const extentSize = o.extentSize ?? 4096
  // holes: files have holes (the source's zero blocks are holes, created images are sparse).
  const fs = new MemoryFs({holes: o.holes})
  fs.seedDir('/state/groups')
  fs.seedDir('/vol')
  fs.seedFile(SRC, o.source)
  const ctx = contextOn(fs)
  await createGroup(ctx, {name: 'g', sourcePath: SRC, extentSize})
  const g = await CloneGroup.open(ctx, 'g', {writable: true})
  for (const c of o.clones) {
    await addClone(g, {clone: c, path: clonePath(c), create: true})
    const s = await ForwardSync.start(g, {clone: c, command: 'test'})
    if (s instanceof ForwardSync) await s.run()
  }
  const toFracture = o.clones.filter((c) => !(o.mirrored ?? []).includes(c))
  if (toFracture.length) await fractureClones(g, toFracture)
  await g.close()
  return {fs, ctx, extentSize, extents: o.extents, size: o.extents * extentSize}
}

/** Open the group for an operation (the restore clone read-only for a protected restore). */
export function openGroup(m: {ctx: GroupContext}, readOnlyClones: string[] = []): Promise<CloneGroup> {
  return CloneGroup.open(m.ctx, 'g', {writable: true, readOnlyClones})
}

/** A promise the test releases, to hold one fs operation mid-flight. */
export function gate(): {promise: Promise<void>; release: () => void} {
  let release!: () => void
  const promise = new Promise<void>((r) => {
    release = r
  })
  return {promise, release}
}

export function setBits(bits: {count: number; get: (e: number) => boolean}): number[] {
  const out: number[] = []
  for (let e = 0; e < bits.count; e++) if (bits.get(e)) out.push(e)
  return out
}

/**
 * INV-1 (and INV-3 for a protected restore's clone) on the durable state of a crash of group
 * g with no host writes (so P stays empty): D[k] alone marks every extent where clone k
 * differs from the source; `restoredFrom`, when given, must still hold `cloneData`.
 */
export async function assertDurableInvariants(fs: MemoryFs, o: {extentSize: number; extents: number; label: string; restoredFrom?: {clone: string; cloneData: Buffer}}): Promise<void> {
  const X = o.extentSize
  const size = o.extents * X
  const rec = await contextOn(fs).store.load('g')
  const src = fs.contentOf(SRC).subarray(0, size)
  for (const c of rec.clones) {
    const map = await PersistentMap.open(fs, `/state/groups/g/${mapFileName(c.name)}`, {kind: 'delta', extentSize: X, volumeSize: size})
    const D = map.bits.clone()
    await map.close()
    const clone = fs.contentOf(clonePath(c.name)).subarray(0, size)
    for (let e = 0; e < o.extents; e++)
      if (src.compare(clone, e * X, (e + 1) * X, e * X, (e + 1) * X) !== 0) assert.ok(D.get(e), `[${o.label}] INV-1: extent ${e} of clone ${c.name} differs from the source, unmarked`)
    if (o.restoredFrom?.clone === c.name) assert.ok(clone.equals(o.restoredFrom.cloneData), `[${o.label}] INV-3: clone ${c.name} was written`)
  }
}

/**
 * Recover group g after a crash as clonectl does: resume an interrupted restore; else, when
 * the source still holds `damage` (a restore from `restoreClone` never started durably), run
 * that restore again; else sync `syncClone` again if it is a member.
 */
export async function recoverAsClonectl(fs: MemoryFs, o: {size: number; damage: number; tuning: {chunkBytes: number; parallel: number}; restoreClone?: string; syncClone?: string}): Promise<void> {
  const ctx = contextOn(fs)
  const op = (await ctx.store.load('g')).operation
  const g = await CloneGroup.open(ctx, 'g', {writable: true, readOnlyClones: o.restoreClone ? [o.restoreClone] : []})
  await recoverStale(g)
  if (op?.kind === 'restore') {
    const s = await RestoreSession.resume(g, {tuning: o.tuning})
    assert.equal(await s.run(), true)
    await s.finish()
  } else if (o.restoreClone && g.src && (await g.src.read(0, o.size)).includes(o.damage)) {
    const s = await RestoreSession.start(g, {clone: o.restoreClone, protected: true, command: 'again', tuning: o.tuning})
    assert.equal(await s.run(), true)
    await s.finish()
  } else if (o.syncClone && g.members.has(o.syncClone)) {
    const f = await ForwardSync.start(g, {clone: o.syncClone, command: 'again', tuning: o.tuning})
    if (f instanceof ForwardSync) assert.equal((await f.run()).completed, true)
  }
  await g.close()
}
