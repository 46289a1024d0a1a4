import type {Server} from 'node:net'

/**
 * Listen on a unix socket that is private (mode 0600 or stricter) from the moment it is
 * bound. A chmod after listen() leaves a window in which anyone the umask lets in can
 * connect and stay connected (issue 13 item 3: 2 tries in 3 under umask 000), so the
 * umask is narrowed around the bind. Node binds a unix socket synchronously inside
 * listen(), so the umask is back before any other code runs. Resolves once listening.
 */
export function listenPrivate(server: Server, path: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    const old = process.umask(0o177)
    try {
      server.listen(path, () => {
        server.off('error', reject)
        resolve()
      })
    } finally {
      process.umask(old)
    }
  })
}
