/**
 * What the NBD server serves: one export. The host I/O path (HostIO) implements it; the
 * server knows nothing else about clones, maps or restores.
 *
 * Contract, as NbdServer uses it:
 * - Many calls are in flight at once, from one connection or several (CAN_MULTI_CONN is
 *   advertised unless the server is told otherwise): calls on overlapping ranges may run
 *   concurrently and complete in any order, as NBD allows.
 * - The server checks every range first: `offset + length <= size`, READ/WRITE lengths at
 *   most 32 MiB; writes never reach a read-only backend. Zero-length requests never reach
 *   the backend. writeZeroes and trim lengths may be up to 4 GiB - 1: chunk them.
 * - `write`'s `data` is the backend's only until the call settles: then the server may reuse
 *   its memory for a later WRITE (PayloadPool). Copy what must outlive the call. It may be a
 *   view into a larger socket buffer.
 * - `read` must resolve to exactly `length` bytes; anything else is answered EIO.
 * - A rejection is answered with an NBD error: `.errno` (a string) or else `.code` of
 *   'ENOSPC'/'EDQUOT'/'EFBIG' → ENOSPC, 'EINVAL' → EINVAL, 'EPERM'/'EROFS' → EPERM,
 *   'ESHUTDOWN' → ESHUTDOWN, anything else → EIO. The server logs it and keeps serving.
 * - With `fua` true, resolve only once the data is durable (INV-4). `flush` resolves once
 *   every write acknowledged before it is durable.
 */
export interface ExportBackend {
  readonly size: number
  readonly readOnly: boolean
  read(offset: number, length: number): Promise<Buffer>
  write(offset: number, data: Buffer, fua: boolean): Promise<void>
  /** `noHole`: NBD_CMD_FLAG_NO_HOLE, the range must stay allocated; otherwise it may be punched. */
  writeZeroes(offset: number, length: number, fua: boolean, noHole?: boolean): Promise<void>
  trim(offset: number, length: number, fua: boolean): Promise<void>
  flush(): Promise<void>
  /**
   * Called when a client disconnects (DISC or EOF): the backend flushes, since nbdcopy
   * sends no FLUSH unless asked. Called once per connection that reached the transmission
   * phase, after every request it sent has completed. Without it the server calls flush().
   */
  clientClosed?(): Promise<void>
}
