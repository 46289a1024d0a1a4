import {CorruptStateError} from '../errors/errors.js'
import type {DurableFs} from '../io/DurableFs.js'
import {ExtentBitmap} from '../map/ExtentBitmap.js'
import {PersistentMap} from '../map/PersistentMap.js'
import {type DeltaMap, ProtectedRestoreMap} from './ProtectedRestoreMap.js'

export type {DeltaMap} from './ProtectedRestoreMap.js'

export function extentCount(volumeSize: number, extentSize: number): number {
  return Math.ceil(volumeSize / extentSize)
}

/** A clone's delta map file name in its group's directory. */
export function mapFileName(clone: string): string {
  return `clone-${clone}.map`
}

/** P's file name in its group's directory (one P at most: one restore at a time). */
export const protectedMapFile = 'restore.pmap'

/** Where a group's map files live (GroupStore.mapPath). */
export interface MapPaths {
  mapPath(group: string, fileName: string): string
}

/**
 * The one owner of a group's map files: creates, opens (writable or read-only) and deletes
 * the clones' delta maps D[k] and the protected restore map P, and holds the P of the restore
 * in progress. Nothing else names a map file. The order of their commits is the
 * Checkpointer's (P, awaited, before any D: INV-1).
 */
export class GroupMaps {
  /** P while a protected restore runs, set by the restore once it is recorded; committed first. */
  p?: ProtectedRestoreMap

  constructor(
    private readonly fs: DurableFs,
    private readonly paths: MapPaths,
    readonly group: string,
    private readonly geometry: {extentSize: number; volumeSize: number},
  ) {}

  get extentCount(): number {
    return extentCount(this.geometry.volumeSize, this.geometry.extentSize)
  }

  /** The path of a map file of this group. */
  path(fileName: string): string {
    return this.paths.mapPath(this.group, fileName)
  }

  /** A new delta map, durably (temp, fsync, rename, fsync dir), with `initial` bits (none when not given). Waits. */
  async createDelta(fileName: string, initial?: ExtentBitmap): Promise<DeltaMap> {
    const {extentSize, volumeSize} = this.geometry
    const map = await PersistentMap.create(this.fs, this.path(fileName), {kind: 'delta', extentSize, volumeSize, extentCount: this.extentCount, operationId: ''}, initial)
    return map as DeltaMap
  }

  /** Write `map` (a stand-in for a damaged one) whole over its file, durably. Waits. */
  async rewriteDelta(fileName: string, map: DeltaMap): Promise<DeltaMap> {
    return (await PersistentMap.create(this.fs, this.path(fileName), {...map.header}, map.bits)) as DeltaMap
  }

  /**
   * Open a clone's delta map, checked against the group (a CorruptStateError when it does
   * not fit). readOnly: nothing is written, now or later (`status`, which holds no lock). Waits.
   */
  async openDelta(fileName: string, opts: {readOnly?: boolean} = {}): Promise<DeltaMap> {
    const {extentSize, volumeSize} = this.geometry
    const map = await PersistentMap.open(this.fs, this.path(fileName), {kind: 'delta', extentSize, volumeSize}, opts.readOnly ? {readOnly: true} : undefined)
    if (map.header.extentCount !== this.extentCount) {
      await map.close()
      throw new CorruptStateError(`map file ${map.path} has ${map.header.extentCount} extents, expected ${this.extentCount}`)
    }
    return map as DeltaMap
  }

  /** openDelta, read-only. Waits. */
  openDeltaReadOnly(fileName: string): Promise<DeltaMap> {
    return this.openDelta(fileName, {readOnly: true})
  }

  /**
   * A delta map with every extent set, held in memory, standing in for a damaged one until a
   * writable open writes it to disk (rewriteDelta; a read-only open never rewrites state).
   */
  async deltaStandIn(fileName: string): Promise<DeltaMap> {
    const bits = new ExtentBitmap(this.extentCount)
    bits.setAll()
    const {extentSize, volumeSize} = this.geometry
    const map = PersistentMap.inMemory(`/${fileName}`, {kind: 'delta', extentSize, volumeSize, extentCount: this.extentCount, operationId: ''}, bits)
    return map as DeltaMap
  }

  /** Close a delta map and delete its file (a removed clone, or one whose add was not recorded). Waits. */
  async deleteDelta(map: DeltaMap): Promise<void> {
    try {
      await map.close()
    } finally {
      await this.fs.unlink(map.path)
    }
  }

  /** Create an empty P tagged with the restore's operation id, durably. Waits. */
  createP(operationId: string): Promise<ProtectedRestoreMap> {
    return ProtectedRestoreMap.create(this.fs, this.path(protectedMapFile), {...this.geometry, extentCount: this.extentCount}, operationId)
  }

  /** Open the P of restore `operationId` (see ProtectedRestoreMap.open). Waits. */
  openP(operationId: string, opts?: {damaged?: 'clear'}): Promise<ProtectedRestoreMap> {
    return ProtectedRestoreMap.open(this.fs, this.path(protectedMapFile), this.geometry, operationId, opts)
  }

  /** Open P read-only: nothing is written, now or later (`status`). Waits. */
  openPReadOnly(operationId: string): Promise<ProtectedRestoreMap> {
    return ProtectedRestoreMap.open(this.fs, this.path(protectedMapFile), this.geometry, operationId, {readOnly: true})
  }

  /** Close P (when given) and delete its file. Waits. */
  async deleteP(P?: ProtectedRestoreMap): Promise<void> {
    try {
      await P?.close()
    } finally {
      await this.fs.unlink(this.path(protectedMapFile))
    }
  }

  /** Whether group `group` has a P file, read from its directory alone (a damaged group.json gives no geometry). Waits. */
  static async hasP(fs: DurableFs, paths: MapPaths, group: string): Promise<boolean> {
    return fs.exists(paths.mapPath(group, protectedMapFile))
  }

  /** Delete a P file that no recorded restore owns (a leftover of one that ended or never began). Waits. */
  async removeLeftoverP(): Promise<void> {
    const path = this.path(protectedMapFile)
    if (await this.fs.exists(path)) await this.fs.unlink(path)
  }
}
