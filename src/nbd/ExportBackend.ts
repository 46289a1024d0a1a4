/** What the NBD server serves: one export. The host I/O path (HostIO) implements it. */
export interface ExportBackend {
  readonly size: number
  readonly readOnly: boolean
  read(offset: number, length: number): Promise<Buffer>
  write(offset: number, data: Buffer, fua: boolean): Promise<void>
  writeZeroes(offset: number, length: number, fua: boolean): Promise<void>
  trim(offset: number, length: number, fua: boolean): Promise<void>
  flush(): Promise<void>
  /** A client disconnected (DISC or EOF): flush, since nbdcopy sends no FLUSH unless asked. */
  clientClosed?(): Promise<void>
}
