/**
 * Base images for the compose smoke test, assembled FROM scratch out of what this machine has,
 * because no image registry is reachable: a node image (node, npm, busybox, a `node` user) to pass
 * as NODE_IMAGE, a NATS image holding Debian's nats-server to pass as NATS_IMAGE, and a busybox image to
 * pass as BUSYBOX_IMAGE (the example stages' base).
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { rootCertificates } from 'node:tls';

export const COMPOSE_BASE_IMAGES = {
  node: 'brain-test-node:20',
  nats: 'brain-test-nats:2.9',
  busybox: 'brain-test-busybox:1.36',
} as const;

const BUSYBOX_CANDIDATES = ['/bin/busybox', '/usr/bin/busybox'];

/** Shared-library paths (`ldd`) a dynamically linked binary loads, the loader included. */
function sharedLibraries(binary: string): string[] {
  const out = execFileSync('ldd', [binary], { encoding: 'utf8' });
  return [...out.matchAll(/(?:=>\s*)?(\/\S+)\s+\(0x/g)].map((m) => m[1] as string);
}

/** Copies a binary and its libraries into `rootfs`, the binary at `target`. */
function copyBinary(rootfs: string, binary: string, target: string): void {
  mkdirSync(dirname(join(rootfs, target)), { recursive: true });
  copyFileSync(binary, join(rootfs, target));
  for (const lib of sharedLibraries(binary)) {
    mkdirSync(dirname(join(rootfs, lib)), { recursive: true });
    copyFileSync(realpathSync(lib), join(rootfs, lib));
  }
}

/** Builds `tag` from a context holding `rootfs/`, busybox and the given Dockerfile lines after `FROM scratch`. */
function buildFromScratch(tag: string, fill: (rootfs: string) => void, dockerfile: string[]): void {
  const busybox = BUSYBOX_CANDIDATES.find((p) => existsSync(p));
  if (busybox === undefined) throw new Error('busybox-static is not installed (apt-get install busybox-static)');
  const context = mkdtempSync(join(tmpdir(), 'brain-base-'));
  try {
    const rootfs = join(context, 'rootfs');
    mkdirSync(join(rootfs, 'bin'), { recursive: true });
    copyFileSync(busybox, join(rootfs, 'bin', 'busybox'));
    mkdirSync(join(rootfs, 'etc'));
    writeFileSync(join(rootfs, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\nnode:x:1000:1000:node:/home/node:/bin/sh\n');
    writeFileSync(join(rootfs, 'etc', 'group'), 'root:x:0:\nnode:x:1000:\n');
    writeFileSync(join(rootfs, 'etc', 'nsswitch.conf'), 'hosts: files dns\n');
    fill(rootfs);
    writeFileSync(
      join(context, 'Dockerfile'),
      [
        'FROM scratch',
        'COPY rootfs/ /',
        'RUN ["/bin/busybox", "sh", "-c", "/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin && /bin/busybox --install -s && mkdir -p /tmp /root /home/node && chmod 1777 /tmp && chown 1000:1000 /home/node"]',
        'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
        ...dockerfile,
        '',
      ].join('\n'),
    );
    execFileSync('docker', ['build', '-q', '-t', tag, context], { stdio: 'pipe' });
  } finally {
    rmSync(context, { recursive: true, force: true });
  }
}

/** The node image: this machine's node and npm on busybox, like the official image's layout. */
export function buildNodeBaseImage(): void {
  const node = realpathSync(execFileSync('sh', ['-c', 'command -v node'], { encoding: 'utf8' }).trim());
  const npm = realpathSync(join(dirname(node), '..', 'lib', 'node_modules', 'npm'));
  buildFromScratch(
    COMPOSE_BASE_IMAGES.node,
    (rootfs) => {
      copyBinary(rootfs, node, '/usr/local/bin/node');
      cpSync(npm, join(rootfs, 'usr/local/lib/node_modules/npm'), { recursive: true, verbatimSymlinks: true });
      symlinkSync('../lib/node_modules/npm/bin/npm-cli.js', join(rootfs, 'usr/local/bin/npm'));
      symlinkSync('../lib/node_modules/npm/bin/npx-cli.js', join(rootfs, 'usr/local/bin/npx'));
      // This machine's npm cache (filled by the host's `npm ci`) as root's: the image build's `npm ci` then runs in
      // full (lockfile, integrity checks, install, prune) but takes its tarballs from the cache, not the registry.
      const cache = join(npmCacheDir(), '_cacache');
      if (existsSync(cache)) cpSync(cache, join(rootfs, 'root/.npm/_cacache'), { recursive: true });
    },
    ['CMD ["node"]'],
  );
}

/** The host's npm cache folder (`npm config get cache`). */
function npmCacheDir(): string {
  return execFileSync('npm', ['config', 'get', 'cache'], { encoding: 'utf8' }).trim();
}

/** The NATS image: Debian's nats-server (2.9, so the compose stack needs NATS_CONFIG=nats-2.9.conf). */
export function buildNatsImage(): void {
  const server = ['/usr/sbin/nats-server', '/usr/bin/nats-server'].find((p) => existsSync(p));
  if (server === undefined) throw new Error('nats-server is not installed (apt-get install nats-server)');
  buildFromScratch(COMPOSE_BASE_IMAGES.nats, (rootfs) => copyBinary(rootfs, server, '/usr/local/bin/nats-server'), [
    'EXPOSE 4222 8222',
    'ENTRYPOINT ["/usr/local/bin/nats-server"]',
  ]);
}

/** busybox alone, like Docker Hub's busybox image: the base of examples/stages. */
export function buildBusyboxImage(): void {
  buildFromScratch(COMPOSE_BASE_IMAGES.busybox, () => undefined, ['CMD ["sh"]']);
}

const HOST_CA_BUNDLES = ['/etc/ssl/certs/ca-certificates.crt', '/etc/pki/tls/certs/ca-bundle.crt'];
const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g;
const pemBody = (pem: string) => pem.replace(/-----(BEGIN|END) CERTIFICATE-----|\s/g, '');

/**
 * The certificates this machine trusts beyond Node's own store, as PEM ('' when none): from NODE_EXTRA_CA_CERTS, else
 * the system bundle. Behind a TLS-intercepting proxy they hold the proxy's CA, which npm inside a container build needs
 * (the Dockerfile's NPM_CA build argument); on a plain machine they are the few roots the distribution and Node differ on.
 */
export function extraCaCertificates(): string {
  const bundle = [process.env.NODE_EXTRA_CA_CERTS, ...HOST_CA_BUNDLES].find((file) => file !== undefined && file !== '' && existsSync(file));
  if (bundle === undefined) return '';
  const known = new Set(rootCertificates.map(pemBody));
  return (readFileSync(bundle, 'utf8').match(PEM_CERTIFICATE) ?? []).filter((pem) => !known.has(pemBody(pem))).join('\n');
}
