# The daemon's own parts (RuleStore, Runtime); splitctl's tests are in CMakeLists.txt here.
add_executable(rule_store_test ${CMAKE_CURRENT_LIST_DIR}/rule_store_test.cpp)
target_link_libraries(rule_store_test PRIVATE splitd_daemon GTest::gtest_main)
splitd_add_gtest(rule_store_test)
