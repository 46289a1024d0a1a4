import type {DurableFs} from '../io/DurableFs.js'
import {ExtentBitmap} from '../map/ExtentBitmap.js'
import {PersistentMap} from '../map/PersistentMap.js'

declare const protectedBrand: unique symbol
declare const deltaBrand: unique symbol

/**
 * The protected restore map P (DESIGN §1, §4): bit set ⇒ a host wrote that source extent
 * during this restore, so it must never be copied over. In memory a bit is set before the
 * host's data write (so no copy can start); it becomes durable only at a checkpoint that
 * first fdatasyncs the source (INV-2). The file is tagged with the restore's operation id, so
 * a P left by another operation is never taken for this one's. Its own type, so a delta map
 * can never be passed where P is meant (GroupMaps.commit orders them by type).
 */
export type ProtectedRestoreMap = PersistentMap & {readonly [protectedBrand]: true}

/** A clone's delta map D[k] (DESIGN §1): bit set ⇒ the extent may differ between source and clone. */
export type DeltaMap = PersistentMap & {readonly [deltaBrand]: true}

export const ProtectedRestoreMap = {
  /** Create an empty P durably (temp, fsync, rename, fsync dir). Waits. */
  async create(fs: DurableFs, path: string, geometry: {extentSize: number; volumeSize: number; extentCount: number}, operationId: string): Promise<ProtectedRestoreMap> {
    const map = await PersistentMap.create(
      fs,
      path,
      {kind: 'protected', extentSize: geometry.extentSize, volumeSize: geometry.volumeSize, extentCount: geometry.extentCount, operationId},
      new ExtentBitmap(geometry.extentCount),
    )
    return map as ProtectedRestoreMap
  },

  /**
   * Open the P of an interrupted restore; a missing, corrupt or foreign P, or a damaged page, is
   * an error (see PersistentMap.open for damaged: 'clear' and readOnly). Waits.
   */
  async open(fs: DurableFs, path: string, geometry: {extentSize: number; volumeSize: number}, operationId: string, opts?: {damaged?: 'clear'; readOnly?: boolean}): Promise<ProtectedRestoreMap> {
    const map = await PersistentMap.open(fs, path, {kind: 'protected', extentSize: geometry.extentSize, volumeSize: geometry.volumeSize, operationId}, opts)
    return map as ProtectedRestoreMap
  },
}
