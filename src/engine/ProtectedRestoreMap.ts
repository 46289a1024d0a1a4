import type {DurableFs} from '../io/DurableFs.js'
import {ExtentBitmap} from '../map/ExtentBitmap.js'
import {PersistentMap} from '../map/PersistentMap.js'

/**
 * The protected restore map P (DESIGN §1, §4): bit set ⇒ a host wrote that source extent
 * during this restore, so it must never be copied over. In memory a bit is set before the
 * host's data write (so no copy can start); it becomes durable only at a checkpoint that
 * first fdatasyncs the source (INV-2). The file is tagged with the restore's operation id, so
 * a P left by another operation is never taken for this one's.
 */
export const ProtectedRestoreMap = {
  /** Create an empty P durably (temp, fsync, rename, fsync dir). Waits. */
  async create(fs: DurableFs, path: string, geometry: {extentSize: number; volumeSize: number; extentCount: number}, operationId: string): Promise<PersistentMap> {
    return PersistentMap.create(
      fs,
      path,
      {kind: 'protected', extentSize: geometry.extentSize, volumeSize: geometry.volumeSize, extentCount: geometry.extentCount, operationId},
      new ExtentBitmap(geometry.extentCount),
    )
  },

  /** Open the P of an interrupted restore; a missing, corrupt or foreign P, or a damaged page, is an error (see PersistentMap.open for damaged: 'clear'). Waits. */
  async open(fs: DurableFs, path: string, geometry: {extentSize: number; volumeSize: number}, operationId: string, opts?: {damaged?: 'clear'}): Promise<PersistentMap> {
    return PersistentMap.open(fs, path, {kind: 'protected', extentSize: geometry.extentSize, volumeSize: geometry.volumeSize, operationId}, opts)
  },
}
