/**
 * One volume interface for image files, block devices, NBD remotes and the in-memory test
 * volume (MemoryFs-backed files). The engines and the NBD server see only this, as nbdcopy's
 * copy loop sees only its rw_ops table.
 */
export type VolumeKind = 'file' | 'block' | 'nbd'

/** What identifies a volume, to notice a change made behind clonectl's back (DESIGN §5). */
export interface Fingerprint {
  kind: VolumeKind
  size: number
  /** Files: st_dev, st_ino, mtime and ctime in ms. */
  dev?: number
  ino?: number
  mtimeMs?: number
  ctimeMs?: number
  /** Block devices: "major:minor". */
  majorMinor?: string
  /** NBD remotes: the URI. */
  uri?: string
}

/**
 * A run of a volume as its storage sees it: `data` (allocated, may hold anything), `zero`
 * (allocated, known to read as zeros) or `hole` (no storage behind it: reads as zeros).
 * A volume that cannot tell says `data`: never `hole` or `zero` for a byte a read would not
 * return as zero.
 */
export type ExtentKind = 'data' | 'zero' | 'hole'
export interface VolumeExtent {
  offset: number
  length: number
  kind: ExtentKind
}

export interface Volume {
  /** The path (or URI) the user named. */
  readonly path: string
  readonly kind: VolumeKind
  /** Size in bytes. */
  readonly size: number
  readonly readOnly: boolean
  /**
   * True when every byte not yet written by this process reads as zero and holes are
   * cheap (a freshly created sparse image): a copy may then skip all-zero chunks.
   */
  knownZero: boolean
  /** Read exactly `length` bytes at `position` (into `into` when given). */
  read(position: number, length: number, into?: Buffer): Promise<Buffer>
  /** Write the whole buffer at `position`. Not durable until flush(). */
  write(position: number, data: Uint8Array): Promise<void>
  /**
   * write(), done synchronously when the volume can do it cheaply (a small page-aligned write
   * into the page cache): true when done, false when the caller must call write(). Throws
   * what write() would reject with. Absent: always write().
   */
  writeNow?(position: number, data: Uint8Array): boolean
  /**
   * Make [position, position+length) read as zeros. Keeps the range allocated (fallocate
   * ZERO_RANGE, BLKZEROOUT, else zeros written) unless `punch`: then its blocks may be freed
   * (a hole, a discard that guarantees zeros), as NBD WRITE_ZEROES without NO_HOLE allows.
   * Not durable until flush().
   */
  writeZeroes(position: number, length: number, opts?: {punch?: boolean}): Promise<void>
  /**
   * TRIM that keeps the maps exact: the range reads as zeros afterwards (never "anything",
   * as NBD's advisory TRIM would allow: clones are compared byte for byte), and its blocks
   * are freed where the storage can (writeZeroes with punch). Not durable until flush().
   */
  trim(position: number, length: number): Promise<void>
  /**
   * The data, zero and hole runs of [position, position+length), in order, covering it
   * exactly (adjacent runs of one kind merged). A volume that cannot tell answers one
   * `data` run. Waits.
   */
  extents(position: number, length: number): Promise<VolumeExtent[]>
  /**
   * The first run of extents(position, length) (undefined for an empty range), found without
   * listing the rest (a sweep over a long range asks only what starts it). Absent: extents()[0].
   * Waits.
   */
  firstExtent?(position: number, length: number): Promise<VolumeExtent | undefined>
  /**
   * False when extents() can only ever answer data (an image without the kernel calls, a
   * block device): a copy then asks for no holes at all. Absent means it may tell. Does not wait.
   */
  tellsHoles?(): boolean
  /**
   * Copy [position, position+length) of `from` to the same place here without passing it
   * through this process (copy_file_range between two image files). False, having done
   * nothing, where it cannot (another kind of volume, the kernel refused): read and write.
   * Like write(), not durable until flush(). Absent: always read and write. Waits.
   */
  copyFrom?(from: Volume, position: number, length: number): Promise<boolean>
  /** Whether copyFrom(from, ...) may copy without this process (false: it would only answer false). Does not wait. */
  canCopyFrom?(from: Volume): boolean
  /**
   * Bytes written so far that went through the page cache (dirty pages the kernel must still
   * write back), as opposed to O_DIRECT writes, which leave none. The sync engine's early
   * writeback counts these only. Absent: every byte written counts. Does not wait.
   */
  readonly pageCacheBytesWritten?: number
  /** Make every completed write durable (fdatasync). */
  flush(): Promise<void>
  /** The volume's current fingerprint. */
  fingerprint(): Promise<Fingerprint>
  close(): Promise<void>
}
