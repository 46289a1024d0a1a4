/**
 * SIGINT/SIGTERM stop the running operation at a safe point instead of killing the process:
 * the engine checkpoints and records where it was. A second signal exits at once (the
 * on-disk state is crash-safe anyway).
 */
export function signalController(): {controller: AbortController; dispose: () => void} {
  const controller = new AbortController()
  const handler = (sig: NodeJS.Signals): void => {
    if (controller.signal.aborted) process.exit(130)
    process.stderr.write(`\n${sig}: stopping at a safe point (again to exit at once)\n`)
    controller.abort(new Error(sig))
  }
  process.on('SIGINT', handler)
  process.on('SIGTERM', handler)
  return {
    controller,
    dispose: () => {
      process.off('SIGINT', handler)
      process.off('SIGTERM', handler)
    },
  }
}
