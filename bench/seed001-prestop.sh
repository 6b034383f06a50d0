#!/bin/sh
# The preStop script of seed 001, as people run it today: disable the instance in Nacos with one
# v1 PUT, then always sleep 45 s (run with terminationGracePeriodSeconds: 60).
# Two changes, both the seed's own "further improvements": the port comes from SERVER_PORT instead
# of being hard-coded, and the service name is cut from HOSTNAME (<deployment>-<hash>-<suffix>).
# The seed compares with `==`, which only bash and busybox sh accept, so the benchmark runs it
# with bash (a Debian /bin/sh, dash, takes the failure branch and never sleeps).
tmp=${HOSTNAME%-*}
PODNAME=${tmp%-*}

result=$(curl -s -X PUT "http://${NACOS_SERVER_ADDR}/nacos/v1/ns/instance?serviceName=${PODNAME}&clusterName=DEFAULT&groupName=DEFAULT_GROUP&ip=${PODIP}&port=${SERVER_PORT}&enabled=false&namespaceId=${NACOS_NAMESPACE}")

echo "curl result: ${result}"

if [ "${result}" == "ok" ]; then
  echo "disabled; sleeping 45 s"
  sleep 45
  exit 0
else
  echo "the PUT failed"
  exit 1
fi
