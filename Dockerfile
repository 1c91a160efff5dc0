# brain-pipeline: one image for all six services (`brain service <name>`, or `brain up`) and `brain setup`.
# NODE_IMAGE lets a build use a mirrored or locally assembled node image instead of Docker Hub's.
ARG NODE_IMAGE=node:20-bookworm-slim

# Build: all dependencies, compile, then drop the dev dependencies.
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
# NPM_CA: PEM certificates for npm to trust besides its own, when building behind a TLS-intercepting proxy
# (`--build-arg NPM_CA="$(cat proxy-ca.pem)"`; certificates, not secrets). Empty, the default: npm's own trust.
ARG NPM_CA=
# --ignore-scripts: `prepare` would compile before the sources are here; no dependency needs an install script.
RUN if [ -n "$NPM_CA" ]; then printf '%s\n' "$NPM_CA" >/tmp/npm-ca.pem && export NODE_EXTRA_CA_CERTS=/tmp/npm-ca.pem; fi \
 && npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json ./
COPY scripts ./scripts
COPY shared ./shared
COPY services ./services
COPY cli ./cli
# `npm run build`: tsc, then the CLI's bundle (scripts/bundle-cli.mjs, esbuild) that bin/brain.js prefers.
RUN npm run build && npm prune --omit=dev --ignore-scripts --no-audit --no-fund

# Runtime: production dependencies, compiled code and the launcher; non-root by default.
FROM ${NODE_IMAGE}
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY bin ./bin
# The dashboard's page (services/web/static.ts reads it from /app/services/web/public).
COPY services/web/public ./services/web/public
USER node
EXPOSE 8080
ENTRYPOINT ["node", "/app/bin/brain.js"]
CMD ["up"]
